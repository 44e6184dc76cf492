"""Snakemake itself killed mid-run (SIGKILL: a lost login node, an OOM kill), with a packed tune job between its
two grid points: the next run refuses the half-done job's outputs, `--rerun-incomplete` reruns it, and no
partial or temporary file remains."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from conftest import BIN, copy_repo, jobs, tiny_config

from peftstudy.io import read_json

pytestmark = pytest.mark.slow

TUNE = "results/tiny/robustness/shapes/bitfit/tune"


def test_a_killed_run_is_refused_then_rerun_incomplete_leaves_no_partial_outputs(tmp_path):
    wf = copy_repo(tmp_path)
    config = tiny_config()
    robustness = config["experiments"]["robustness"]
    # One packed tune job of two grid points, long enough to be killed between them.
    robustness.update(methods=["bitfit"], recipe=dict(robustness["recipe"], epochs=40))
    path = wf.config(config, "tiny.yaml")
    target = "results/tiny/robustness/tune.csv"  # the experiment's selection summary
    run = subprocess.Popen(
        [str(BIN / "snakemake"), "-c1", target, "--configfile", str(path)],
        cwd=wf.root,
        env=wf.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes Snakemake and its job together
    )
    deadline = time.time() + 600
    while not list((wf.root / TUNE).glob("*/metrics.json")):
        assert run.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    written = list((wf.root / TUNE).glob("*/metrics.json"))
    assert len(written) == 1 and len(read_json(written[0], schema="tune")["points"]) == 1, "killed between the points"

    # A real run first meets the killed run's lock, and says how to clear it.
    locked = wf.snakemake("-c1", target, "--configfile", str(path), check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stderr
    wf.snakemake("--unlock", target, "--configfile", str(path))
    # Without --rerun-incomplete (the profiles set it) the half-done job's output is refused, by name.
    refused = wf.snakemake(
        "-n", "--workflow-profile", "none", target, "--configfile", str(path), check=False, timeout=300
    )
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "Incomplete files" in said
    assert str(written[0].relative_to(wf.root)) in said

    rerun = wf.snakemake("-c1", "--rerun-incomplete", target, "--configfile", str(path))
    executed = sorted(rule for rule, _ in jobs(rerun.stdout + rerun.stderr))
    # The select job's spec file (rule spec_file) needs no input: the killed run may have written it already.
    assert [rule for rule in executed if rule != "spec_file"] == ["select", "tune"]
    (metrics,) = (wf.root / TUNE).glob("*/metrics.json")
    points = read_json(metrics, schema="tune")["points"]
    assert len(points) == 2 and all(p["epochs_run"] == 40 for p in points)
    leftovers = [p for p in (wf.root / "results").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert wf.snakemake("-n", target, "--configfile", str(path)).stdout.count("rule ") == 0
