"""The slurm profile through a real one-node Slurm (.ci/slurm-up starts it in CI): every training job is a
Slurm job asking for the GPU users' jobs ask for, the results equal a local run's, a second run submits nothing.

Outside CI, without Slurm, the test skips; with CI=true it must run, so a missing Slurm fails it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_repo, jobs, tiny_config

pytestmark = pytest.mark.slow


def slurm_available() -> bool:
    if not shutil.which("sinfo"):
        return False
    probe = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return probe.returncode == 0 and "idle" in probe.stdout


@pytest.fixture(scope="module")
def slurm():
    if not slurm_available():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no idle Slurm: .ci/slurm-up should have started it")
        pytest.skip("no Slurm here (run .ci/slurm-up)")


def slurm_jobs() -> list[tuple[str, str, str]]:
    """(job id, comment (the plugin's rule_<rule>_wildcards_...), GPUs asked for) of every job Slurm remembers."""
    out = subprocess.run(
        ["squeue", "-t", "all", "-h", "-O", "JobID:20,Comment:200,tres-per-job:40"], capture_output=True, text=True
    ).stdout
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]


def slurm_config() -> dict:
    """A handful of Slurm jobs: one task, linear and LoRA (3 grid points in one tune submission), one seed."""
    config = tiny_config()
    config["study"] = "slurm"
    del config["robustness"]
    del config["experiments"]["robustness"]
    vtab = config["experiments"]["vtab"]
    vtab["datasets"] = ["count"]
    vtab["runs_per_job"] = {"tune": 2}  # LoRA's two grid points in one submission
    config["datasets"] = {"count": config["datasets"]["count"]}
    # The GPU request users' jobs send; the CI Slurm's GPU is fake, and the code falls back to the CPU.
    config["resources"] = {"tune": {"gpu": 1, "mem_mb": 1500, "runtime": 10}, "final": {"gpu": 1, "mem_mb": 1500}}
    return config


def test_the_slurm_profile_runs_every_training_job_through_sbatch(slurm, tmp_path):
    (tmp_path / "cluster").mkdir()
    (tmp_path / "local").mkdir()
    wf = copy_repo(tmp_path / "cluster")
    profile = yaml.safe_load((REPO / "slurm/config.yaml").read_text())
    # The test cluster: no conda channels here, its partition, quick polls (docs/slurm.md §2).
    del profile["configfile"], profile["software-deployment-method"]
    profile.update({"slurm-init-seconds-before-status-checks": 2, "latency-wait": 5, "cores": 2})
    profile["default-resources"] = {"slurm_partition": "debug", "mem_mb": 500, "runtime": 10}
    (wf.root / "slurm").mkdir()
    (wf.root / "slurm/config.yaml").write_text(yaml.safe_dump(profile))
    config = wf.config(slurm_config())

    def run(*extra: str) -> str:
        # SIGKILL: a Snakemake stuck polling Slurm ignores SIGTERM (docs/slurm.md §4).
        snakemake = shutil.which("snakemake", path=wf.env["PATH"])
        cmd = ["timeout", "-s", "KILL", "900", snakemake, "all", "--profile", "slurm", "--configfile", str(config)]
        proc = subprocess.run([*cmd, *extra], cwd=wf.root, env=wf.env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-5000:]
        return proc.stdout + proc.stderr

    before = {job for job, _, _ in slurm_jobs()}
    out = run()
    executed = jobs(out)
    submitted = {rule.split("_")[0] for rule, _ in executed if rule.startswith(("prepare", "tune", "final"))}
    assert submitted == {"final", "prepare", "tune"}
    root = wf.root / "results/slurm"
    logs = [
        *root.glob("data/*/prepare_*.log"),
        *root.glob("vtab/*/*/tune/*/log.txt"),
        *root.glob("vtab/*/*/final/*/*/log.txt"),
    ]
    assert len(logs) == 4 + 2 + 2  # prepare 4 splits; tune: one pack per method; final: one seed each
    for log in logs:
        assert "SLURM_JOB_ID=" in log.read_text(), log
    # Training jobs asked Slurm for one GPU, as users' jobs do; data jobs for none (squeue keeps finished jobs).
    gpus = {comment: tres for job, comment, tres in slurm_jobs() if job not in before}
    assert {c.split("_")[1] for c in gpus} == {"prepare", "tune", "final"}, gpus
    for comment, tres in gpus.items():
        assert (tres == "gres:gpu:1") == (not comment.startswith("rule_prepare")), (comment, tres)
    # The same study run locally gives the same numbers and the same test logits.
    local = copy_repo(tmp_path / "local")
    local.snakemake("all", "--configfile", str(local.config(slurm_config())))
    for path in root.glob("vtab/*/*/final/*/*/logits.npz"):
        twin = local.root / "results/slurm" / path.relative_to(root)
        assert twin.read_bytes() == path.read_bytes(), path
    # Nothing is stale: a second run submits nothing.
    assert "Nothing to be done" in run("-n")


def test_sweep_overhead_through_the_slurm_profile(slurm, tmp_path):
    """benchmarks/sweep_overhead.py --slurm: the tiny study's DAG through the slurm profile, every training job a
    Slurm job, and the CPU time measured is Snakemake's own (a wrapper such as `timeout` would read as 0 s). One
    size (both experiments at one dataset): measured, nothing fitted."""
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(tiny_config()))
    cmd = [sys.executable, str(REPO / "benchmarks/sweep_overhead.py"), "--configfile", str(study), "--sizes", "2x1"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    before = {job for job, _, _ in slurm_jobs()}
    proc = subprocess.run([*cmd, "--no-fit", "--slurm", "debug"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    size = re.search(r"^size=2x1: .* 2 checkpoints, executed (\d+); Snakemake CPU (\d+\.\d\d) s", proc.stdout, re.M)
    assert size, proc.stdout
    assert float(size[2]) > 0.5, size[0]
    submitted = [comment for job, comment, _ in slurm_jobs() if job not in before]
    # Data preparation, training and robustness are Slurm jobs; selection and the rest run where Snakemake runs.
    assert {c.split("_")[1] for c in submitted} == {"prepare", "tune", "final", "robustness"}, submitted
    assert re.match(r"^snakemake_cpu\[2x1\]=\d+\.\d\d ", proc.stdout.strip().splitlines()[-1])  # no fit, no projection
