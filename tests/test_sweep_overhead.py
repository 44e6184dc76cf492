"""benchmarks/sweep_overhead.py on the tiny study: each size runs the real DAG through Snakemake (stand-in jobs,
the real selections), and the projection to the study at its full size reproduces what was measured there; sizes
that cannot tell the fit's per-job and per-checkpoint terms apart are refused before anything runs. Its stand-in
for `peftstudy` writes what the schemas accept."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Workflow, tiny_config

from peftstudy.io import validate

SIZE_LINE = re.compile(
    r"^size=(\dx\d): planned (\d+) jobs, (\d+) checkpoints, executed (\d+); Snakemake CPU (\d+\.\d\d) s", re.MULTILINE
)
LAST_LINE = re.compile(r"^snakemake_seconds=(\d+) jobs=(\d+) checkpoints=(\d+)$")
SCRIPT = [sys.executable, str(REPO / "benchmarks/sweep_overhead.py")]


def sweep_overhead():
    """The benchmark as a module (benchmarks/ is a folder of scripts, not a package)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module("sweep_overhead")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


@pytest.mark.slow
def test_sweep_overhead_on_the_tiny_study(workflow: Workflow, tmp_path) -> None:
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(tiny_config()))
    # tiny: vtab (2 tasks x linear and LoRA), then robustness (1 task x 2 methods); a checkpoint per experiment.
    # 1x1 has one checkpoint, 2x1 and 2x2 two at different job counts: the terms are separable.
    proc = subprocess.run(
        [*SCRIPT, "--configfile", str(study), "--sizes", "1x1", "2x1", "2x2", "--project", str(study), "--cores", "2"],
        cwd=REPO,
        env=workflow.env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    sizes = {m[1]: m for m in SIZE_LINE.finditer(proc.stdout)}
    assert sorted(sizes) == ["1x1", "2x1", "2x2"], proc.stdout
    assert [int(sizes[k][3]) for k in ("1x1", "2x1", "2x2")] == [1, 2, 2]
    for _, planned, _, executed, cpu in (m.groups() for m in sizes.values()):
        assert int(executed) > int(planned)  # the finals appear behind the checkpoints
        assert float(cpu) > 0
    match = LAST_LINE.match(proc.stdout.strip().splitlines()[-1])
    assert match, proc.stdout[-2000:]
    # 2x2 is the whole tiny study: its dry run's counts, and the fit through the sizes measured.
    full = sizes["2x2"]
    assert (int(match[2]), int(match[3])) == (int(full[2]), int(full[3]))
    assert abs(int(match[1]) - float(full[5])) <= 0.25 * float(full[5]) + 1


def test_sizes_with_the_same_checkpoints_are_refused_before_anything_runs(tmp_path) -> None:
    """Its old default's shape: sizes that vary the datasets only, one checkpoint per experiment at every size."""
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(tiny_config()))
    args = ["--configfile", str(study), "--project", str(study), "--keep"]
    refused = subprocess.run([*SCRIPT, *args, "--sizes", "allx1", "allx2"], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "refused before running anything" in refused.stderr and "every size has 2 checkpoint(s)" in refused.stderr
    assert "--sizes" in refused.stderr  # says what to do
    kept = re.search(r"^kept (\S+)$", refused.stderr, re.MULTILINE)
    assert kept and not list(Path(kept[1]).glob("*/results/*/*/selected.json"))  # nothing ran
    planned = subprocess.run(
        [*SCRIPT, *args, "--sizes", "1x1", "2x1", "2x2", "--plan-only"], cwd=REPO, capture_output=True, text=True
    )
    assert planned.returncode == 0, planned.stderr[-3000:]
    assert re.findall(r"^size=(\S+): planned \d+ jobs, (\d+) checkpoints$", planned.stdout, re.MULTILINE) == [
        ("1x1", "1"),
        ("2x1", "2"),
        ("2x2", "2"),
    ]


@pytest.mark.parametrize(
    ("points", "why"),
    [
        ([(558, 1), (1110, 1), (1662, 1), (2214, 1)], "every size has 1 checkpoint"),  # VTAB-1K alone at 1-4 tasks
        ([(1087, 53), (1624, 53), (2799, 53)], "every size has 53 checkpoint"),  # the paper at 1, 2, all datasets
        ([(300, 1), (1087, 53), (300, 1), (1087, 53)], "2 distinct points"),  # repeated sizes add nothing
        ([(1087, 53), (1624, 54), (2799, 53)], "rank 2 of 3"),  # separable by rounding only
    ],
)
def test_the_fit_refuses_terms_it_cannot_separate(points, why) -> None:
    module = sweep_overhead()
    sizes = [module.Measured(module.Size(None, 1), jobs, cp, jobs, 0.1 * jobs, 0.0, 1.0) for jobs, cp in points]
    with pytest.raises(module.NotSeparable, match=re.escape(why)):
        module.fit(sizes)


def test_the_fit_recovers_separable_terms() -> None:
    """The default sizes' shape (one experiment, then all 53, each at two job counts): a, b, c come back."""
    module = sweep_overhead()
    points = [(54, 1), (900, 1), (1087, 53), (1624, 53)]
    seconds = [5 + 0.02 * jobs + 0.002 * cp * jobs for jobs, cp in points]
    sizes = [
        module.Measured(module.Size(1, 1), j, cp, j, s, 0.0, 1.0) for (j, cp), s in zip(points, seconds, strict=True)
    ]
    assert module.fit(sizes) == pytest.approx([5, 0.02, 0.002], rel=1e-6)


def test_the_stand_in_writes_what_the_schemas_accept(tmp_path) -> None:
    from peftstudy.plan import specs, stage_specs

    backbone = specs.Backbone(arch="vit", weights="w", sha256=None, keep_head=False)
    run = specs.RunSettings(experiment="vtab", dataset="count", method="lora", recipe={}, backbone=backbone, device="")
    point, data = specs.GridPoint(gp="0123abcd", hp={"lr": 0.1}), dict(train="t", manifest="m")
    tune = specs.TuneSpec(run=run, points=(point,), seed=0, val="v", metrics="tune.json", **data)
    final = specs.FinalSpec(
        run=run, point=point, seed=0, test="t", metrics="final.json", logits="l.npz", peft="p.safetensors", **data
    )
    ensemble = stage_specs.EnsembleSpec(
        finals=("f.json",),
        logits=("final/seed0/logits.npz",),
        methods=("lora",),
        confident_k=0.1,
        ensembles="ensembles.json",
        agreement="agreement.json",
    )
    robustness = stage_specs.RobustnessSpec(
        method="lora",
        backbone=backbone,
        final="f.json",
        metrics=("final/seed0/metrics.json",),
        peft=("final/seed0/peft.safetensors",),
        in_distribution=stage_specs.EvalSet(name="id", test="a.npz"),
        shifted=(),
        alphas=(0.0, 1.0),
        class_subsets={},
        device="cpu",
        ood="ood.json",
        wise="wise.json",
    )
    stages = [["run", spec.to_json()] for spec in (tune, final, ensemble, robustness)]
    for argv in stages:
        subprocess.run([sys.executable, str(REPO / "benchmarks/sweep_stand_in.py"), *argv], cwd=tmp_path, check=True)
    schemas = {"tune": "tune", "final": "metrics", "ensembles": "ensembles", "agreement": "agreement"}
    for name, schema in (schemas | {"ood": "ood", "wise": "wise"}).items():
        validate(json.loads((tmp_path / f"{name}.json").read_text()), schema)
