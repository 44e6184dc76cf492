"""One GPU per job on a workstation (peftstudy.gpus): jobs at once never share a device, a killed job's device
comes back, a job finding none free waits (or fails at once with PEFTSTUDY_GPU_WAIT=0), and the devices are
named as CUDA_VISIBLE_DEVICES takes them. On the CPU with simulated devices, in real concurrent processes; with
a real GPU, also through torch (the last test)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

from peftstudy import gpus, models

# A job as far as devices go: claim one, say which (stdout) and when it was claimed and when it let go (a file),
# then hold it until told to end (the file `stop` appears) or for `hold` seconds.
JOB = """
import pathlib, sys, time
from peftstudy import gpus
claim = gpus.claim()
start = time.monotonic()
print(claim.device, flush=True)
stop, hold, record = pathlib.Path(sys.argv[1]), float(sys.argv[2]), pathlib.Path(sys.argv[3])
while not stop.exists() and time.monotonic() - start < hold:
    time.sleep(0.02)
record.write_text(f"{claim.device} {time.time() - (time.monotonic() - start)} {time.time()}")
"""

SMI = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-11111111-aaaa-bbbb-cccc-000000000000)
GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-22222222-aaaa-bbbb-cccc-000000000000)
  MIG 3g.40gb     Device  0: (UUID: MIG-33333333-aaaa-bbbb-cccc-000000000000)
  MIG 3g.40gb     Device  1: (UUID: MIG-44444444-aaaa-bbbb-cccc-000000000000)
GPU 2: NVIDIA H100 80GB HBM3 (UUID: GPU-55555555-aaaa-bbbb-cccc-000000000000)
"""


def start_job(tmp_path: Path, name: str, simulated: int, wait: float, hold: float = 60.0) -> subprocess.Popen:
    env = dict(
        os.environ, PYTHONPATH=str(REPO / "src"), **{gpus.SIMULATE_VAR: str(simulated), gpus.WAIT_VAR: str(wait)}
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    args = [sys.executable, "-c", JOB, str(tmp_path / "stop"), str(hold), str(tmp_path / f"{name}.record")]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def claimed(job: subprocess.Popen) -> str:
    """The device a job claimed: its first line (read as it comes)."""
    return job.stdout.readline().strip()


def test_jobs_at_once_never_share_a_device(tmp_path):
    """Ten jobs on four simulated devices, started together and holding theirs for a while: at every moment each
    device has one job at most (their claim-to-release times never overlap on one device), and all ten ran."""
    jobs = [start_job(tmp_path, f"job{i}", simulated=4, wait=120, hold=0.6) for i in range(10)]
    for job in jobs:
        assert job.wait(timeout=120) == 0, job.stderr.read()
    spans: dict[str, list[tuple[float, float]]] = {}
    for i in range(10):
        device, start, end = (tmp_path / f"job{i}.record").read_text().split()
        spans.setdefault(device, []).append((float(start), float(end)))
    assert set(spans) == {f"simulated{i}" for i in range(4)}  # every device used: the lowest free one is taken
    for device, held in spans.items():
        held.sort()
        for (_, end), (start, _) in itertools.pairwise(held):
            assert end <= start, (device, held)  # the next holder claimed only after the last let go
    assert sum(len(held) for held in spans.values()) == 10


def test_a_killed_jobs_device_comes_back_to_a_job_that_waits(tmp_path):
    """Two devices, both held: a third job waits, saying so and who holds them; kill -9 of a holder gives the
    waiting job that holder's device."""
    holders = [start_job(tmp_path, f"holder{i}", simulated=2, wait=0) for i in range(2)]
    devices = [claimed(job) for job in holders]
    assert sorted(devices) == ["simulated0", "simulated1"]
    waiting = start_job(tmp_path, "waiting", simulated=2, wait=60)
    line = waiting.stderr.readline()
    assert "waiting for a free GPU" in line and f"pid {holders[1].pid}" in line, line
    time.sleep(1.5)
    assert waiting.poll() is None  # still waiting: nothing was freed
    os.kill(holders[1].pid, signal.SIGKILL)
    assert claimed(waiting) == devices[1]
    (tmp_path / "stop").touch()
    for job in (holders[0], waiting):
        assert job.wait(timeout=30) == 0
    assert holders[1].wait(timeout=30) == -signal.SIGKILL


def test_a_job_finding_no_free_device_fails_when_told_not_to_wait(tmp_path):
    holder = start_job(tmp_path, "holder", simulated=1, wait=0)
    assert claimed(holder) == "simulated0"
    refused = start_job(tmp_path, "refused", simulated=1, wait=0)
    assert refused.wait(timeout=30) != 0
    error = refused.stderr.read()
    assert "no free GPU after 0 s: all 1 are held" in error and f"pid {holder.pid}" in error, error
    assert "--resources gpu=N" in error and gpus.WAIT_VAR in error
    (tmp_path / "stop").touch()
    assert holder.wait(timeout=30) == 0


def test_devices_are_named_as_cuda_visible_devices_takes_them():
    """Each GPU by its UUID; a MIG-split GPU by its instances' UUIDs (CUDA sees only those)."""
    assert gpus.parse_devices(SMI) == [
        "GPU-11111111-aaaa-bbbb-cccc-000000000000",
        "MIG-33333333-aaaa-bbbb-cccc-000000000000",
        "MIG-44444444-aaaa-bbbb-cccc-000000000000",
        "GPU-55555555-aaaa-bbbb-cccc-000000000000",
    ]


def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bin").mkdir()
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat <<'EOF'\n{SMI}EOF\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")


def test_a_job_bound_for_cuda_claims_a_gpu_before_torch_starts_cuda(tmp_path, monkeypatch):
    """pick_device claims for `cuda`, and for `auto` with a CUDA build of torch: the claimed GPU becomes the job's
    only visible device. A job on the CPU, on a numbered device, given devices already (Slurm, the user) or with
    a CPU build of torch claims none."""
    fake_nvidia_smi(tmp_path, monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the fake GPUs have no driver behind them
    monkeypatch.setattr(torch.version, "cuda", None)
    assert models.pick_device("auto", environ={}) == torch.device("cpu")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert models.pick_device("cpu", environ={}) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="device 'cuda:1' asked for"):
        models.pick_device("cuda:1", environ={})
    with pytest.raises(RuntimeError, match=r"given GPUs \(CUDA_VISIBLE_DEVICES=3\)"):
        models.pick_device("auto", environ={"CUDA_VISIBLE_DEVICES": "3"})
    assert gpus._held is None
    environ = {gpus.LOCKS_VAR: os.environ[gpus.LOCKS_VAR]}  # the test session's (conftest)
    with pytest.raises(RuntimeError, match=r"given GPUs \(CUDA_VISIBLE_DEVICES=GPU-1111"):
        models.pick_device("auto", environ=environ)
    assert environ["CUDA_VISIBLE_DEVICES"] == "GPU-11111111-aaaa-bbbb-cccc-000000000000"
    # The next job of the machine gets the next device (a MIG instance) while this one holds the first.
    other = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    other.pop("CUDA_VISIBLE_DEVICES", None)
    code = "import os; from peftstudy import gpus; gpus.claim(); print(os.environ['CUDA_VISIBLE_DEVICES'])"
    result = subprocess.run([sys.executable, "-c", code], env=other, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "MIG-33333333-aaaa-bbbb-cccc-000000000000", result.stderr


def test_a_simulated_gpu_is_claimed_and_the_job_runs_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    environ = {gpus.SIMULATE_VAR: "2", gpus.LOCKS_VAR: os.environ[gpus.LOCKS_VAR]}
    assert models.pick_device("auto", environ=environ) == torch.device("cpu")
    assert gpus._held is not None and gpus._held.device == "simulated0"
    assert "CUDA_VISIBLE_DEVICES" not in environ


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: run by benchmarks/gpu_checks.sh")
def test_real_gpus_one_per_job(capsys):
    """On a GPU machine, through torch: as many jobs at once as GPUs each see one device, each another (by
    UUID); one job more waits, and gets a device when a job ends."""
    count = len(gpus.machine_devices({}))
    code = (
        "import sys, time, torch; from peftstudy import models; models.pick_device('cuda');"
        "print(torch.cuda.device_count(), torch.cuda.get_device_properties(0).uuid, flush=True); time.sleep(15)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    env.pop("CUDA_VISIBLE_DEVICES", None)

    def job() -> subprocess.Popen:
        args = [sys.executable, "-c", code]
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    jobs = [job() for _ in range(count)]
    seen = [j.stdout.readline().split() for j in jobs]  # each has claimed and started CUDA
    extra = job()
    first = next(line for line in extra.stderr if line.startswith("gpus:"))  # after torch's own warnings, if any
    assert "waiting for a free GPU" in first, first
    seen_extra = extra.stdout.readline().split()
    for j in [*jobs, extra]:
        assert j.wait(timeout=120) == 0, j.stderr.read()
    assert [s[0] for s in seen] == ["1"] * count  # one visible device each
    assert len({s[1] for s in seen}) == count  # each another
    assert seen_extra[0] == "1" and seen_extra[1] in {s[1] for s in seen}  # a device handed back
    with capsys.disabled():
        print(f"{count} GPU(s): {[s[1] for s in seen]}; the job more got {seen_extra[1]} after waiting")


def test_snakemake_resources_gpu_bound_the_jobs_that_claim(tmp_path):
    """The README's command on a workstation, with the local executor: `--resources gpu=2` lets two jobs of a rule
    asking `gpu: 1` run at once out of four cores, and the two at once always claim different devices (each
    told not to wait, so a job finding both held would fail)."""
    (tmp_path / "job.py").write_text(JOB)
    (tmp_path / "Snakefile").write_text(
        "rule all:\n"
        "    input: expand('job{i}.record', i=range(6))\n\n"
        "rule job:\n"
        "    output: 'job{i}.record'\n"
        "    resources: gpu=1\n"
        f"    shell: '{sys.executable} job.py stop 0.5 {{output}}'\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), **{gpus.SIMULATE_VAR: "2", gpus.WAIT_VAR: "0"})
    env.pop("CUDA_VISIBLE_DEVICES", None)
    snakemake = Path(sys.executable).parent / "snakemake"
    command = [str(snakemake), "all", "--cores", "4", "--resources", "gpu=2", "--quiet"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    spans = sorted(tuple(map(float, (tmp_path / f"job{i}.record").read_text().split()[1:])) for i in range(6))
    most = max(sum(start <= t < end for start, end in spans) for t, _ in spans)
    assert most == 2  # both devices used at once, never a third job
