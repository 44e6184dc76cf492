"""The CLI's start-up: each stage imports only what it uses (most jobs of a study are short, so a job's imports
are much of its cost: torch and timm ~3.4 CPU-s, peft/transformers and matplotlib more)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The stages that train or predict: they need torch and timm (timm pulls torchvision and torch._dynamo).
TORCH_STAGES = {"fetch-backbone", "pretrain", "tune", "final", "robustness", "zero-shot-head"}

# Imports every listed stage's module as the CLI does, after parsing a stage's --help (the CLI's own start),
# and prints which heavy packages ended up loaded. The stages `peftstudy run` dispatches to are named by their
# specs (plan.specs.STAGES), the others by their sub-command.
IMPORT_STAGES = """
import contextlib, importlib, io, json, sys
from peftstudy import cli
from peftstudy.plan import specs

parser = cli.parser()
stages = {name: sub.get_default("func") for action in parser._subparsers._group_actions
          for name, sub in action.choices.items() if name != "run"}
stages |= {name: cli._stage(spec.target) for name, spec in specs.all_stages().items()}
with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
    cli.main(["run", "--help"])
wanted = json.loads(sys.argv[1])
for name in wanted or stages:
    importlib.import_module(stages[name].module)
heavy = ("torch", "timm", "torchvision", "peft", "transformers", "matplotlib", "pandas", "sklearn", "jupyter_client")
print(json.dumps({"stages": sorted(stages), "loaded": sorted(m for m in heavy if m in sys.modules)}))
"""


def _import_stages(names: list[str]) -> dict:
    """Stage modules imported together in a fresh interpreter: if together they load no X, each alone loads none."""
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_STAGES, json.dumps(names)], cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def test_stages_that_do_not_train_import_no_torch_and_trainers_no_plotting_or_peft():
    every = _import_stages(["select"])["stages"]
    assert set(every) >= TORCH_STAGES
    light = sorted(set(every) - TORCH_STAGES)
    assert {"select", "collect", "tables", "report", "ensemble", "generate", "prepare"} <= set(light)
    # tables and report read CSVs with pandas; the figures are drawn in the notebook's kernel, not here.
    assert _import_stages(light)["loaded"] == ["pandas"]
    assert _import_stages(["select", "collect", "ensemble", "generate", "prepare"])["loaded"] == []
    # Training needs torch and timm (with torchvision), nothing else heavy: peft, plotting and tables stay out.
    assert _import_stages(sorted(TORCH_STAGES))["loaded"] == ["timm", "torch", "torchvision"]


def test_schemas_parse_as_the_pure_python_safe_loader_parses_them():
    """io reads the schemas with libyaml's parser where PyYAML has it: the same documents."""
    import yaml

    from peftstudy import io

    expected = {path.name: yaml.safe_load(path.read_text()) for path in io.SCHEMA_DIR.glob("*.schema.yaml")}
    assert len(expected) > 5 and io._schemas() == expected


def test_a_stage_imports_with_the_gc_paused_and_freezes_what_it_imported():
    """The GC is back on when the stage runs, and the objects of the process's imports are out of its reach."""
    import argparse
    import gc

    from peftstudy import cli

    seen = []
    args = argparse.Namespace(record=lambda: seen.append((gc.isenabled(), gc.get_freeze_count())))
    try:
        cli._stage(f"{__name__}:_record")(args)  # a stage entry: `module:function`, called with the parsed args
    finally:
        gc.unfreeze()
    [(enabled, frozen)] = seen
    assert enabled and frozen > 0


def _record(args) -> None:
    args.record()


def test_run_hands_the_stage_its_spec_checked_read_from_the_argument_or_a_file(tmp_path, monkeypatch):
    """`peftstudy run SPEC` and `peftstudy run @FILE`: the stage named by the spec's `stage` gets the spec as its
    dataclass and the options; a spec that does not fit is refused before any stage is imported."""
    import pytest

    from peftstudy import cli
    from peftstudy.plan import specs

    called = []
    monkeypatch.setattr(cli, "_stage", lambda target: lambda *args: called.append((target, *args)))
    point = {"gp": "0000000a", "hp": {"lr": 0.1}}
    backbone = {"arch": "vit", "weights": "w", "sha256": None, "keep_head": False}
    run = dict(experiment="e", dataset="d", method="lora", recipe={}, backbone=backbone, device="cpu")
    data = dict(stage="tune", run=run, points=[point], seed=0, train="t", val="v", manifest="m", metrics="o")
    (tmp_path / "spec.json").write_text(json.dumps(data))
    cli.main(["run", json.dumps(data), "--threads", "3"])
    cli.main(["run", f"@{tmp_path / 'spec.json'}"])
    (target, spec, options), (_, again, defaults) = called
    assert target == "peftstudy.train.runs:tune" and isinstance(spec, specs.TuneSpec) and again == spec
    assert spec.points == (specs.GridPoint(**point),) and spec.run.backbone.weights == "w"
    assert options == specs.Options(threads=3, concurrent=0) and defaults == specs.Options()
    with pytest.raises(specs.SpecError, match=r"tune\.points\[0\]\.hp: expected an object, got list"):
        cli.main(["run", json.dumps(dict(data, points=[{"gp": "0000000a", "hp": [1]}]))])
    assert len(called) == 2
