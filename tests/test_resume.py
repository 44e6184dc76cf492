"""Preemption and kills: a run killed (SIGKILL) or preempted (SIGTERM) mid-training and started again resumes
from its last epoch and ends with the same bytes as a run never interrupted (CPU): a final run, and a tune run
that evaluates every epoch, stops early and keeps its best epoch, killed after that best epoch. A checkpoint
of a run with other settings is ignored."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, REPO, prepare_mini_task, training_spec

from peftstudy.train import resume
from peftstudy.train.resume import PREEMPTED_STATUS

RECIPE = {"epochs": 12, "batch_size": 32, "warmup_epochs": 1, "lr_step": "authors", "drop_path": 0.1}
HP = {"lr": 0.005, "wd": 0.0001, "r": 4}
# Val every epoch, early stopping, the best epoch's weights kept. With HP_TUNE the run's best val epoch comes
# a few epochs before it stops (checked below), so a kill can land between them.
TUNE_RECIPE = dict(RECIPE, epochs=20, eval_every=1, early_patience=3, keep="best")
HP_TUNE = {"lr": 0.01, "wd": 0.0001, "r": 4}
VOLATILE = ("wall_seconds", "provenance")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return prepare_mini_task(tmp_path_factory.mktemp("count"), "count", ("train", "val", "trainval", "test"))


def command(phase, task, out, resume_dir, recipe=RECIPE, hp=HP, points=None):
    """The `peftstudy run` command of a tune or final job of one LoRA grid point (id 00000000; a tune job:
    `points` in its place) with seed 0, on the CPU."""
    points = points or [{"gp": "00000000", "hp": hp}]
    splits = ("train", "val") if phase == "tune" else ("trainval", "test")
    spec = training_spec(phase, task, out, "lora", points, recipe, splits=splits, resume_dir=str(resume_dir))
    return [str(BIN / "peftstudy"), "run", spec.to_json()]


def env():
    return dict(os.environ, PYTHONPATH=str(REPO / "src"))


def run(cmd) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


def epochs_saved(checkpoint: Path) -> int:
    """The epochs a checkpoint holds (0 while there is none); it is replaced atomically, so always whole."""
    if not checkpoint.exists():
        return 0
    return resume.read(checkpoint)[1]["result"]["epochs_run"]


def interrupted(cmd, checkpoint, sig, after_epoch=2):
    """Start `cmd`, send `sig` once a checkpoint of at least `after_epoch` epochs is on disk, wait for it to end."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists():
            stamp = checkpoint.stat().st_mtime_ns
            if stamp != seen and epochs_saved(checkpoint) >= after_epoch:
                proc.send_signal(sig)
                break
            seen = stamp
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def run_metrics(folder: Path) -> dict:
    """The one run's metrics of a final's metrics.json, or of a one-point tune job's file."""
    record = json.loads((folder / "metrics.json").read_text())
    return record["points"][0] if "points" in record else record


def same_metrics(a: Path, b: Path) -> dict:
    ma, mb = run_metrics(a), run_metrics(b)
    assert {k: v for k, v in ma.items() if k not in VOLATILE} == {k: v for k, v in mb.items() if k not in VOLATILE}
    return ma


def same_files(a, b):
    for name in ("logits.npz", "peft.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert same_metrics(a, b)["epochs_run"] == RECIPE["epochs"]


def resumed_after(log: str) -> int:
    """The epoch a run says it resumed after."""
    match = re.search(r"resumed from \S+ after epoch (\d+)", log)
    assert match, log
    return int(match[1])


@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, PREEMPTED_STATUS)], ids=["kill", "term"]
)
def test_an_interrupted_run_resumes_and_ends_as_an_uninterrupted_one(task, tmp_path, sig, status):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir(), broken.mkdir()
    run(command("final", task, whole, tmp_path / "resume-whole"))
    checkpoint = tmp_path / "resume/final-00000000-seed0.pt"
    code, log = interrupted(command("final", task, broken, tmp_path / "resume"), checkpoint, sig)
    assert code == status, log
    assert checkpoint.exists() and not (broken / "metrics.json").exists()
    again = run(command("final", task, broken, tmp_path / "resume"))
    after = resumed_after(again.stderr)
    assert after >= 2
    # The log starts with the first attempt's lines up to the checkpoint, replayed from it (a requeued job's rule
    # log is removed before its second start).
    replayed = again.stderr.split("resumed from")[0]
    first = [line for line in log.splitlines() if line.startswith("epoch ")][:after]
    assert [line for line in replayed.splitlines() if line.startswith("epoch ")] == first and len(first) == after
    same_files(whole, broken)
    assert not checkpoint.exists()  # removed once the run is done


@pytest.fixture(scope="module")
def whole_tune(task, tmp_path_factory) -> tuple[Path, dict]:
    """An uninterrupted tune run: its folder and metrics, its best val epoch well before it stopped early."""
    whole = tmp_path_factory.mktemp("whole")
    run(command("tune", task, whole, whole / "resume", TUNE_RECIPE, HP_TUNE))
    metrics = run_metrics(whole)
    best, ran = metrics["metrics"]["val_best_epoch"], metrics["epochs_run"]
    assert best + 2 < ran < TUNE_RECIPE["epochs"], (best, ran)  # early stopping, some epochs after the best
    return whole, metrics


def test_a_tune_run_killed_after_its_best_epoch_resumes_with_that_best_state(task, tmp_path, whole_tune):
    whole, metrics = whole_tune
    best = metrics["metrics"]["val_best_epoch"]
    broken = tmp_path / "broken"
    broken.mkdir()
    checkpoint = tmp_path / "resume/tune-00000000-seed0.pt"
    tune = command("tune", task, broken, tmp_path / "resume", TUNE_RECIPE, HP_TUNE)
    code, log = interrupted(tune, checkpoint, signal.SIGKILL, after_epoch=best + 1)
    assert code == -signal.SIGKILL, log
    _, saved = resume.read(checkpoint)
    assert saved["result"]["best_epoch"] == best < saved["result"]["epochs_run"] and saved["best_params"]
    again = run(tune)
    assert resumed_after(again.stderr) > best  # the kept weights can only have come from the checkpoint
    assert "early stop" in again.stderr
    same_metrics(whole, broken)
    assert not checkpoint.exists()


def test_a_checkpoint_of_a_run_with_other_settings_is_ignored(task, tmp_path, whole_tune):
    whole, _ = whole_tune
    broken = tmp_path / "broken"
    broken.mkdir()
    checkpoint = tmp_path / "resume/tune-00000000-seed0.pt"
    # The same grid point id and seed, so the same checkpoint file, but another learning rate.
    other = command("tune", task, broken, tmp_path / "resume", TUNE_RECIPE, dict(HP_TUNE, lr=0.002))
    code, log = interrupted(other, checkpoint, signal.SIGTERM)
    assert code == PREEMPTED_STATUS and epochs_saved(checkpoint) >= 2, log
    again = run(command("tune", task, broken, tmp_path / "resume", TUNE_RECIPE, HP_TUNE))
    assert f"{checkpoint}: not resumed: settings differ (hp); starting afresh" in again.stderr
    assert "resumed from" not in again.stderr
    same_metrics(whole, broken)


def test_a_tune_job_whose_pack_changed_trains_only_its_new_points(task, tmp_path):
    """A pack that gains a point (plan.study.packs) reruns as one job: its old points come back as they were
    written (same wall time: not retrained), the new one as if trained alone; losing a point trains nothing; a
    changed recipe reuses nothing."""
    recipe = dict(RECIPE, epochs=2)
    points = {gp: dict(HP, lr=lr) for gp, lr in (("0000000a", 0.001), ("0000000b", 0.005), ("0000000c", 0.01))}

    def tune(gps, out, resume, job_recipe=recipe):
        done = run(command("tune", task, out, resume, job_recipe, points=[{"gp": gp, "hp": points[gp]} for gp in gps]))
        return done.stdout, {p["gp"]: p for p in json.loads((out / "metrics.json").read_text())["points"]}

    resume = tmp_path / "resume"
    _, first = tune(["0000000a", "0000000b"], tmp_path / "first", resume)
    log, grown = tune(["0000000a", "0000000b", "0000000c"], tmp_path / "grown", resume)
    assert "2 of 3 grid points reused" in log and list(grown) == ["0000000a", "0000000b", "0000000c"]
    assert {gp: grown[gp] for gp in first} == first
    _, alone = tune(["0000000c"], tmp_path / "alone", tmp_path / "resume-alone")
    strip = lambda m: {k: v for k, v in m.items() if k not in VOLATILE}  # noqa: E731
    assert strip(grown["0000000c"]) == strip(alone["0000000c"])
    log, shrunk = tune(["0000000a", "0000000c"], tmp_path / "shrunk", resume)
    assert "2 of 2 grid points reused" in log and shrunk == {gp: grown[gp] for gp in ("0000000a", "0000000c")}
    log, _ = tune(["0000000a"], tmp_path / "other-recipe", resume, dict(recipe, epochs=3))
    assert "reused" not in log
