"""Shared fixtures: a scratch copy of the workflow, and Snakemake runs whose executed jobs can be read back."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from peftstudy import gpus
from peftstudy.plan import stage_specs

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPIED = ("Snakefile", "workflow", "config.yaml", "studies", "src", "report", "resources", "envs")
JOB_LINE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


@dataclass
class Workflow:
    """A copy of the repository (code included, so tests may edit a method) with its own results/."""

    root: Path

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.root / "src")  # the copy's package, not the checkout's
        env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
        return env

    def config(self, overrides: dict | None = None, name: str = "test.yaml") -> Path:
        path = self.root / name
        path.write_text(yaml.safe_dump(overrides or {}, sort_keys=False))
        return path

    def snakemake(self, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(BIN / "snakemake"), *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
        return proc


def jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job Snakemake announced in its output (a run, or a dry run's plan)."""
    found: list[tuple[str, dict[str, str]]] = []
    for line in output.splitlines():
        match = JOB_LINE.match(line.strip())
        if match:
            found.append((match[1], {}))
        elif found and line.strip().startswith("wildcards:"):
            pairs = line.strip()[len("wildcards:") :].split(",")
            found[-1][1].update(dict(p.strip().split("=", 1) for p in pairs if "=" in p))
    return found


def copy_repo(dest: Path) -> Workflow:
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    (dest / "profiles").symlink_to("workflow/profiles")
    return Workflow(dest)


@pytest.fixture(autouse=True)
def own_gpu_locks(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """GPUs claimed by tests (peftstudy.gpus) are claimed in a lock folder of the test session, never in the
    machine's where real jobs claim theirs, and a claim made in the test process ends with its test (the
    CUDA_VISIBLE_DEVICES it set too, for the processes later tests start)."""
    monkeypatch.setenv(gpus.LOCKS_VAR, str(tmp_path_factory.getbasetemp() / "gpu-locks"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    yield
    gpus.release()
    if visible is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible


@pytest.fixture
def workflow(tmp_path: Path) -> Workflow:
    return copy_repo(tmp_path)


def prepare_mini_task(out: Path, name: str, splits: tuple[str, ...]) -> Path:
    """A task of the mini study (config.yaml) generated into `out` and its splits prepared, as the pipeline does."""
    from peftstudy.data import layout, synthetic
    from peftstudy.plan import study

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    size = config["backbone"]["image_size"]
    spec = dict(study.data_spec(config["datasets"][name]), image_size=size)
    synthetic.generate(name, spec, config["seed"], str(out / "source"), str(out / "manifest.json"))
    for split in splits:
        layout.prepare(out / "source", out / "manifest.json", split, out / f"{split}.npz", size)
    return out


def report_spec(tables_dir: Path, out: Path) -> Any:
    """The report job's spec over a folder of tables (each of stage_specs.TABLES and the authors' copies; those absent
    read as not computed yet), its page and copies in `out`."""

    names = [*stage_specs.TABLES, *(f"authors_{name}" for name in stage_specs.AUTHORS)]
    return stage_specs.ReportSpec(
        tables=str(tables_dir),
        csvs={name: str(tables_dir / f"{name}.csv") for name in names},
        notebook=str(REPO / "report/notebooks/figures.ipynb"),
        template=str(REPO / "report/templates/index.html.j2"),
        tolerance=1.0,
        html=str(out / "index.html"),
        executed=str(out / "figures.ipynb"),
        copies={name: str(out / "tables" / f"{name}.csv") for name in names},
    )


def mini_backbone(**changes: Any) -> dict[str, Any]:
    """The mini study's backbone as a training job's spec holds it (plan.specs.Backbone, as JSON)."""
    backbone = yaml.safe_load((REPO / "config.yaml").read_text())["backbone"]
    spec = {"arch": backbone["arch"], "weights": str(REPO / backbone["weights"]), "sha256": backbone["sha256"]}
    return dict(spec, keep_head=False, **changes)


def training_spec(
    stage: str,
    task: Path,
    out: Path,
    method: str,
    points: list[dict[str, Any]],
    recipe: dict[str, Any],
    seed: int = 0,
    splits: tuple[str, str] = ("train", "val"),
    **run: Any,
) -> Any:
    """A tune (or final: one point) job's plan.specs spec of the mini study's `count` task prepared in `task` (the
    splits it trains on and scores), its outputs in `out`; `run` replaces the plan.specs.RunSettings fields
    (backbone: a dict, device, resume_dir)."""
    from peftstudy.plan import specs

    settings = dict(experiment="vtab", dataset="count", method=method, recipe=recipe, device="cpu", resume_dir="")
    settings |= {"backbone": mini_backbone(), **run}
    train, held_out = (str(task / f"{split}.npz") for split in splits)
    data = {"train": train, "manifest": str(task / "manifest.json")}
    if stage == "tune":
        spec = dict(points=points, val=held_out, metrics=str(out / "metrics.json"))
    else:
        [point] = points
        outputs = {"metrics": "metrics.json", "logits": "logits.npz", "peft": "peft.safetensors"}
        spec = dict(point=point, test=held_out, **{k: str(out / v) for k, v in outputs.items()})
    return specs.load(specs.all_stages()[stage], dict(spec, run=settings, seed=seed, **data), stage)


def tune_point(gp: str, val_top1: float, val_best_top1: float | None = None, **fields) -> dict:
    """A tune run's metrics.json, as the engine writes it, with the scores given (`fields` replace its own: hp,
    dataset, method, ...)."""
    provenance = {
        "code_version": "test",
        "code_hash": "0",
        "config_hash": "0",
        "packages": {},
        "data_manifest_sha256": "0",
        "backbone_sha256": None,
        "host": "test",
        "python": "3",
    }
    return {
        **dict(status="ok", phase="tune", experiment="clip", dataset="shapes", method="lora", gp=gp, hp={"lr": 0.1}),
        **dict(method_config={}, recipe={}, seed=0, trainable_params=10, head_params=2, epochs_run=2),
        **dict(skipped_batches=0, wall_seconds=1.0, device="cpu", precision="fp32", cached_features=False),
        "metrics": {"train_loss": 1.0, "train_top1": 50.0, "val_top1": val_top1, "val_best_top1": val_best_top1},
        "kept": "last",
        "provenance": provenance,
        **fields,
    }


def dependencies(**changes: Any) -> Any:
    """A run's plan.depends.Dependencies for tests that need one (a checkpoint's, a provenance's), with `changes`."""
    from peftstudy.plan.depends import Dependencies

    record = {
        "settings": {"method": "lora", "phase": "tune", "gp": "00000000", "hp": {"lr": 0.01}, "recipe": {}, "seed": 0},
        "data": {"train": "1" * 64, "val": "2" * 64, "manifest": "3" * 64},
        "backbone_weights": "4" * 64,
        "zero_shot_head": None,
        "code": "5" * 16,
        "device": "cpu",
        "precision": "fp32",
        "torch": "2.0",
        "timm": "1.0",
    }
    return Dependencies(**dict(record, **changes))


def tiny_config() -> dict:
    """A study small enough for tests: every stage, two VTAB-like tasks (one run per job), robustness with one
    shifted set (several runs per job)."""
    default = yaml.safe_load((REPO / "config.yaml").read_text())
    recipe = {"epochs": 2, "batch_size": 16, "warmup_epochs": 1, "eval_batch_size": 128, "lr_step": "authors"}
    shapes = dict(default["datasets"]["shapes"], train=48, val=32, test=64)
    return {
        "study": "tiny",
        "seed": 0,
        "threads": 1,
        "device": "cpu",
        "backbone": default["backbone"],
        "datasets": {
            "count": {"source": "synthetic", "task": "count", "classes": 6, "train": 48, "val": 32, "test": 64},
            "digits": {"source": "synthetic", "task": "digits", "classes": 10, "train": 48, "val": 32, "test": 64},
            "shapes": shapes,
            "shapes_sketch": dict(default["datasets"]["shapes_sketch"], test=64),
        },
        "experiments": {
            "vtab": {
                "datasets": ["count", "digits"],
                "methods": ["linear", "lora"],
                "grid": {"lr": [0.005], "wd": [0.0001]},
                "method_grids": {"lora": {"r": [2, 4]}},
                "recipe": recipe,
                "seeds": [0],
                "head": "new",
                "selection": {"tie_break": "last"},
            },
            # Packed: both grid points of a method share a tune job.
            "robustness": {
                "datasets": ["shapes"],
                "methods": ["linear", "bitfit"],
                "grid": {"lr": [0.001], "wd": [0.0001], "drop_path": [0.0, 0.1]},
                "recipe": recipe,
                "runs_per_job": {"tune": 2},
                "seeds": [0, 1],
                "head": "pretrained",
                "selection": {"tie_break": "last"},
            },
        },
        "robustness": {
            "experiment": "robustness",
            "dataset": "shapes",
            "ood": ["shapes_sketch"],
            "alphas": [0.0, 0.5, 1.0],
        },
    }
