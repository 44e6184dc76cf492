"""Preemption and kills: a run killed (SIGKILL) or preempted (SIGTERM) mid-training and started again resumes
from its last epoch and ends with the same bytes as a run never interrupted (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import yaml
from conftest import BIN, REPO, prepare_mini_task

from peftstudy.train.resume import PREEMPTED_STATUS

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
BACKBONE = CONFIG["backbone"]
RECIPE = {"epochs": 12, "batch_size": 32, "warmup_epochs": 1, "lr_step": "authors", "drop_path": 0.1}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return prepare_mini_task(tmp_path_factory.mktemp("count"), "count", ("trainval", "test"))


def final_command(task, out, resume_dir):
    backbone = dict(BACKBONE, weights=str(REPO / BACKBONE["weights"]), keep_head=False)
    del backbone["image_size"], backbone["pretrain"]
    return [
        str(BIN / "peftstudy"), "final", "--experiment", "vtab", "--dataset", "count", "--method", "lora",
        "--gp", "00000000", "--hp", json.dumps({"lr": 0.005, "wd": 0.0001, "r": 4}),
        "--recipe", json.dumps(RECIPE), "--backbone", json.dumps(backbone), "--seed", "0",
        "--train", str(task / "trainval.npz"), "--test", str(task / "test.npz"),
        "--manifest", str(task / "manifest.json"), "--device", "cpu", "--resume-dir", str(resume_dir),
        "--out-metrics", str(out / "metrics.json"), "--out-logits", str(out / "logits.npz"),
        "--out-weights", str(out / "peft.safetensors"),
    ]  # fmt: skip


def env():
    return dict(os.environ, PYTHONPATH=str(REPO / "src"))


def interrupted(cmd, checkpoint, sig):
    """Start `cmd`, send `sig` once its second epoch checkpoint is on disk, wait for it to end."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists():
            stamp = checkpoint.stat().st_mtime_ns
            if seen is not None and stamp != seen:  # rewritten once: at least two epochs done
                proc.send_signal(sig)
                break
            seen = stamp
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


def same_files(a, b):
    for name in ("logits.npz", "peft.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["metrics"] == mb["metrics"] and ma["epochs_run"] == mb["epochs_run"] == RECIPE["epochs"]


@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, PREEMPTED_STATUS)], ids=["kill", "term"]
)
def test_an_interrupted_run_resumes_and_ends_as_an_uninterrupted_one(task, tmp_path, sig, status):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    whole.mkdir(), broken.mkdir()
    subprocess.run(final_command(task, whole, tmp_path / "resume-whole"), env=env(), check=True, capture_output=True)
    checkpoint = tmp_path / "resume/final-00000000-seed0.pt"
    code, log = interrupted(final_command(task, broken, tmp_path / "resume"), checkpoint, sig)
    assert code == status, log
    assert checkpoint.exists() and not (broken / "metrics.json").exists()
    again = subprocess.run(final_command(task, broken, tmp_path / "resume"), env=env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stderr
    same_files(whole, broken)
    assert not checkpoint.exists()  # removed once the run is done
