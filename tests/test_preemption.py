"""Issue 16, the engine's side: SIGTERM is acted on within a training step (Slurm's KillWait is 30 s), the
requeued job resumes to the same bytes, and a job that asks for a GPU and finds none fails instead of
training on the CPU."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
import torch
from conftest import BIN, REPO, prepare_mini_task, training_spec

from peftstudy import gpus, models
from peftstudy.train.resume import PREEMPTED_STATUS

# Batches of 4: 100 steps an epoch on the 400 train+val images, so a signal lands well inside one.
RECIPE = {"epochs": 3, "batch_size": 4, "warmup_epochs": 1, "lr_step": "authors", "drop_path": 0.1}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return prepare_mini_task(tmp_path_factory.mktemp("count"), "count", ("trainval", "test"))


def final_command(task, out, resume_dir, recipe=RECIPE):
    point = {"gp": "00000000", "hp": {"lr": 0.005, "wd": 0.0001, "r": 4}}
    splits = ("trainval", "test")
    spec = training_spec("final", task, out, "lora", [point], recipe, splits=splits, resume_dir=str(resume_dir))
    return [str(BIN / "peftstudy"), "run", spec.to_json()]


def env():
    return dict(os.environ, PYTHONPATH=str(REPO / "src"))


def test_sigterm_mid_epoch_stops_within_a_step_and_the_requeued_run_ends_the_same(task, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(final_command(task, whole, tmp_path / "resume-whole"), env=env(), check=True, capture_output=True)
    checkpoint = tmp_path / "resume/final-00000000-seed0.pt"
    proc = subprocess.Popen(
        final_command(task, broken, tmp_path / "resume"), env=env(), stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 600
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(
        0.2
    )  # the first epoch's checkpoint is on disk: the second epoch is under way (or, on a busy machine, the third)
    proc.send_signal(signal.SIGTERM)
    _, log = proc.communicate(timeout=600)
    assert proc.returncode == PREEMPTED_STATUS, log
    stopped = re.search(r"SIGTERM: stopped (\d+) training step\(s\) after it, in epoch (\d+) at step (\d+) of", log)
    assert stopped, log
    after, epoch, step = map(int, stopped.groups())
    assert after <= 1 and epoch in (2, 3) and step < 100, log  # mid-epoch, not at its end
    assert checkpoint.exists() and not (broken / "metrics.json").exists()
    resumed = subprocess.run(
        final_command(task, broken, tmp_path / "resume"), env=env(), check=True, capture_output=True, text=True
    )
    assert "resumed from" in resumed.stderr and not checkpoint.exists()
    for name in ("logits.npz", "peft.safetensors"):
        assert (whole / name).read_bytes() == (broken / name).read_bytes(), name
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (whole, broken))
    assert ours["metrics"] == theirs["metrics"] and ours["epochs_run"] == theirs["epochs_run"] == RECIPE["epochs"]


@pytest.mark.parametrize(
    ("device", "environ", "named"),
    [
        ("cuda", {}, "device 'cuda' asked for"),
        ("cuda:1", {}, "device 'cuda:1' asked for"),
        ("auto", {"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "1"}, "given GPUs (SLURM_GPUS_ON_NODE=1)"),
        ("auto", {"CUDA_VISIBLE_DEVICES": "0"}, "given GPUs (CUDA_VISIBLE_DEVICES=0)"),
    ],
)
def test_a_job_that_asks_for_a_gpu_and_finds_none_fails(monkeypatch, device, environ, named):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpus, "machine_devices", lambda environ: [])  # none to claim either, on a GPU machine too
    with pytest.raises(RuntimeError, match="finds no CUDA device") as error:
        models.pick_device(device, environ=environ)
    assert named in str(error.value)


@pytest.mark.parametrize(
    "environ", [{}, {"CUDA_VISIBLE_DEVICES": ""}, {"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "0"}]
)
def test_a_job_given_no_gpu_trains_on_the_cpu(monkeypatch, environ):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpus, "machine_devices", lambda environ: [])  # none to claim either, on a GPU machine too
    assert models.pick_device("auto", environ=environ) == torch.device("cpu")
    assert models.pick_device("cpu", environ=environ) == torch.device("cpu")
