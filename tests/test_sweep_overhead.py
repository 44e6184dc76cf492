"""benchmarks/sweep_overhead.py on the tiny study: each size runs the real DAG through Snakemake (stand-in jobs,
the real selections), and the projection to the study at its full size reproduces what was measured there. Its
stand-in for `peftstudy` writes what the schemas accept."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, Workflow, tiny_config

from peftstudy.io import validate

SIZE_LINE = re.compile(
    r"^datasets=(\d): planned (\d+) jobs, (\d+) checkpoints, executed (\d+); Snakemake CPU (\d+\.\d\d) s", re.MULTILINE
)
LAST_LINE = re.compile(r"^snakemake_seconds=(\d+) jobs=(\d+) checkpoints=(\d+)$")


@pytest.mark.slow
def test_sweep_overhead_on_the_tiny_study(workflow: Workflow, tmp_path) -> None:
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(tiny_config()))
    cmd = [sys.executable, str(REPO / "benchmarks/sweep_overhead.py"), "--configfile", str(study)]
    proc = subprocess.run(
        [*cmd, "--datasets", "1", "2", "--project", str(study), "--cores", "2"],
        cwd=REPO,
        env=workflow.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    sizes = {int(m[1]): m for m in SIZE_LINE.finditer(proc.stdout)}
    assert sorted(sizes) == [1, 2], proc.stdout
    # tiny: vtab (2 tasks x linear and LoRA) and robustness (1 task x 2 methods); a checkpoint per experiment.
    assert [int(sizes[k][3]) for k in (1, 2)] == [2, 2]
    for _, planned, _, executed, cpu in (m.groups() for m in sizes.values()):
        assert int(executed) > int(planned)  # the finals appear behind the checkpoints
        assert float(cpu) > 0
    match = LAST_LINE.match(proc.stdout.strip().splitlines()[-1])
    assert match, proc.stdout[-2000:]
    # Two datasets is the whole tiny study: its dry run's counts, and the fit through the sizes measured.
    full = sizes[2]
    assert (int(match[2]), int(match[3])) == (int(full[2]), int(full[3]))
    assert abs(int(match[1]) - float(full[5])) <= 0.25 * float(full[5]) + 1


def test_the_stand_in_writes_what_the_schemas_accept(tmp_path) -> None:
    run = {"--experiment": "vtab", "--dataset": "count", "--method": "lora", "--recipe": "{}"}
    stages = {
        "tune": {**run, "--points": '[{"gp": "0123abcd", "hp": {"lr": 0.1}}]', "--seed": "0", "--out": "tune.json"},
        "final": {
            **run,
            **{"--gp": "0123abcd", "--hp": '{"lr": 0.1}', "--seed": "0", "--out-metrics": "final.json"},
            **{"--out-logits": "logits.npz", "--out-weights": "peft.safetensors"},
        },
        "ensemble": {"--methods": "lora", "--out-ensembles": "ensembles.json", "--out-agreement": "agreement.json"},
        "robustness": {"--method": "lora", "--eval": "id=a.npz", "--alphas": "[0.0, 1.0]", "--out-ood": "ood.json"}
        | {"--out-wise": "wise.json"},
    }
    for stage, args in stages.items():
        argv = [str(REPO / "benchmarks/sweep_stand_in.py"), stage, *(x for pair in args.items() for x in pair)]
        subprocess.run([sys.executable, *argv], cwd=tmp_path, check=True)
    schemas = {"tune": "tune", "final": "metrics", "ensembles": "ensembles", "agreement": "agreement"}
    for name, schema in (schemas | {"ood": "ood", "wise": "wise"}).items():
        validate(json.loads((tmp_path / f"{name}.json").read_text()), schema)
