"""benchmarks/sweep_overhead.py on the tiny study: each size runs the real DAG through Snakemake (stand-in jobs,
the real selections), and the projection to the study at its full size reproduces what was measured there."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, Workflow, tiny_config

pytestmark = pytest.mark.slow

SIZE_LINE = re.compile(
    r"^datasets=(\d): planned (\d+) jobs, (\d+) checkpoints, executed (\d+); Snakemake CPU (\d+\.\d\d) s", re.MULTILINE
)
LAST_LINE = re.compile(r"^snakemake_seconds=(\d+) jobs=(\d+) checkpoints=(\d+)$")


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
    # tiny: vtab (2 tasks x linear and LoRA) and robustness (1 task x 2 methods); a checkpoint per method and task.
    assert [int(sizes[k][3]) for k in (1, 2)] == [4, 6]
    for _, planned, _, executed, cpu in (m.groups() for m in sizes.values()):
        assert int(executed) > int(planned)  # the finals appear behind the checkpoints
        assert float(cpu) > 0
    match = LAST_LINE.match(proc.stdout.strip().splitlines()[-1])
    assert match, proc.stdout[-2000:]
    # Two datasets is the whole tiny study: its dry run's counts, and the fit through the sizes measured.
    full = sizes[2]
    assert (int(match[2]), int(match[3])) == (int(full[2]), int(full[3]))
    assert abs(int(match[1]) - float(full[5])) <= 0.25 * float(full[5]) + 1
