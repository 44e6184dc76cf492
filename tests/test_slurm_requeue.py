"""Issue 16 on a real Slurm (.ci/slurm-up starts the one-node cluster in CI): a training job submitted with
--requeue, requeued by `scontrol requeue` after its first epoch checkpoint, runs again, resumes from that
checkpoint (its log says so) and ends with the bytes of a run never interrupted; sbatch'ed by hand, and as a
Snakemake job of the slurm executor with the profile's `slurm-requeue: true`, whose run then still succeeds.

Outside CI, without Slurm, the test skips; with CI=true a missing Slurm fails it (the `slurm` fixture).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO, prepare_mini_task
from test_preemption import RECIPE, env, final_command
from test_slurm import slurm  # noqa: F401  (the fixture: skip here, fail under CI=true)

pytestmark = pytest.mark.slow

# Ten epochs of about a second: the requeue (SIGTERM within a step) lands well before the end.
EPOCHS = 10


def requeue_command(task: Path, out: Path, resume_dir: Path) -> list[str]:
    return final_command(task, out, resume_dir, dict(RECIPE, epochs=EPOCHS))


def job_state(job: str) -> str:
    out = subprocess.run(["squeue", "-j", job, "-t", "all", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def requeue_when_checkpointed(job_id: str, checkpoint: Path) -> None:
    """`scontrol requeue` once the first epoch's checkpoint is on disk, then release the job at once (Slurm holds
    a requeued job back for about 2 minutes: BeginTime)."""
    wait_for(checkpoint.exists, "the first epoch's checkpoint", 300)
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
    wait_for(lambda: job_state(job_id) == "PENDING", "the requeued job to pend", 120)
    # Released only once the first attempt has exited, and slurmd has had a moment to clean up after it: released
    # within milliseconds on a busy machine, slurmctld started the job again before slurmd let go of the old one
    # ("Killing non-startable batch JobId=...: Job credential revoked", the job FAILED). Slurm's own hold is minutes.
    wait_for(lambda: not attempt_running(checkpoint.parent), "the first attempt to exit", 120)
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, capture_output=True)


def attempt_running(resume_dir: Path) -> bool:
    """Whether a training process of this resume folder still runs (the job's first attempt)."""
    return subprocess.run(["pgrep", "-f", "--", f"--resume-dir {resume_dir}"], capture_output=True).returncode == 0


def wait_for(condition, what: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"waited {seconds} s for {what}")
        time.sleep(0.1)


def test_a_requeued_slurm_job_resumes_from_its_checkpoint_to_the_same_bytes(slurm, tmp_path):  # noqa: F811
    task = prepare_mini_task(tmp_path / "count", "count", ("trainval", "test"))
    whole, requeued, resume = tmp_path / "whole", tmp_path / "requeued", tmp_path / "resume"
    log = tmp_path / "slurm.log"
    # Appended, not truncated, when the job starts again: the log keeps both runs. The restart count is Slurm's.
    script = f"echo restart=${{SLURM_RESTART_COUNT:-0}}; exec {shlex.join(requeue_command(task, requeued, resume))}"
    submit = ["sbatch", "--parsable", "--requeue", "--open-mode=append", "-o", str(log), "-c", "1", "--mem", "2000"]
    job = subprocess.run([*submit, "--wrap", script], env=env(), check=True, capture_output=True, text=True)
    job_id = job.stdout.strip().split(";")[0]
    try:
        checkpoint = resume / "final-00000000-seed0.pt"
        requeue_when_checkpointed(job_id, checkpoint)
        # Meanwhile, the same run uninterrupted, outside Slurm.
        subprocess.run(requeue_command(task, whole, tmp_path / "resume-whole"), env=env(), check=True)
        wait_for(lambda: job_state(job_id) in ("COMPLETED", "FAILED", "CANCELLED"), "the job to end", 300)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    text = log.read_text()
    assert job_state(job_id) == "COMPLETED", text
    assert re.findall(r"^restart=(\d)$", text, re.MULTILINE) == ["0", "1"], text  # ran twice, the second requeued
    first, second = text.split("restart=1")
    assert "SIGTERM: stopped" in first and "DUE TO JOB REQUEUE" in first, text  # stopped, not killed
    resumed = re.search(r"resumed from \S+ after epoch (\d+)", second)
    assert resumed and 1 <= int(resumed[1]) < EPOCHS, text  # from its checkpoint, not from scratch
    assert "epoch 1/" not in second.split("resumed from")[1], text  # epoch 1 only replayed from the checkpoint
    assert not checkpoint.exists()  # cleared once the run ended
    for name in ("logits.npz", "peft.safetensors"):
        assert (whole / name).read_bytes() == (requeued / name).read_bytes(), name
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (whole, requeued))
    assert ours["metrics"] == theirs["metrics"] and theirs["epochs_run"] == EPOCHS


# One training job through the slurm executor, with the profile's settings that matter here (slurm/config.yaml).
SNAKEFILE = """
rule final:
    output:
        "out/metrics.json",
    log:
        "final.log",
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        command={command!r},
    shell:
        "{{params.command}} > {{log}} 2>&1"
"""


def test_a_requeued_snakemake_slurm_job_resumes_and_the_run_succeeds(slurm, tmp_path):  # noqa: F811
    """The plugin keeps polling a requeued job (PENDING again, then RUNNING) and reports it when it completes;
    the job's second start reruns the rule (the job step runs with --force --ignore-incomplete), which resumes."""
    task = prepare_mini_task(tmp_path / "count", "count", ("trainval", "test"))
    command = requeue_command(task, tmp_path / "out", tmp_path / "resume")
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(command=shlex.join(command)))
    profile = {k: v for k, v in yaml.safe_load((REPO / "slurm/config.yaml").read_text()).items() if "slurm" in k}
    assert profile["slurm-requeue"] is True
    snakemake = [
        "timeout", "-s", "KILL", "300", str(BIN / "snakemake"), "--executor", "slurm", "--jobs", "1",
        "--slurm-requeue", "--slurm-status-command", profile["slurm-status-command"],
        "--slurm-init-seconds-before-status-checks", "2", "--default-resources", "slurm_partition=debug",
        "--latency-wait", "5",
    ]  # fmt: skip
    proc = subprocess.Popen(
        snakemake, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(
            lambda: (tmp_path / "final.log").exists() and "SLURM_JOB_ID=" in (tmp_path / "final.log").read_text(),
            "the job to start",
            120,
        )
        job_id = re.search(r"SLURM_JOB_ID=(\d+)", (tmp_path / "final.log").read_text())[1]
        requeue_when_checkpointed(job_id, tmp_path / "resume/final-00000000-seed0.pt")
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-5000:]
    assert "Restarts=1" in subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    log = (tmp_path / "final.log").read_text()
    assert re.search(r"resumed from \S+ after epoch [1-9]", log), log
    # Snakemake's job step removed the first attempt's log; the run replays its lines from the checkpoint.
    assert "earlier attempts of this run" in log and "epoch 1/" in log.split("resumed from")[0], log
    whole = tmp_path / "whole"
    subprocess.run(requeue_command(task, whole, tmp_path / "resume-whole"), env=env(), check=True)
    for name in ("logits.npz", "peft.safetensors"):
        assert (whole / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name
