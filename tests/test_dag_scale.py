"""benchmarks/dag_scale.py on the embedded mini study: its report line, a faked study with nothing to do, the
job count a plain dry run plans."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO, Workflow

pytestmark = pytest.mark.slow

LAST_LINE = re.compile(r"^dag_seconds=(\d+\.\d\d) noop_seconds=(\d+\.\d\d) jobs=(\d+)$")


def test_dag_scale_on_the_mini_study(workflow: Workflow) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "dag_scale.py"), "--configfile", "config.yaml", "--repeats", "1"],
        cwd=REPO,
        env=workflow.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    lines = proc.stdout.strip().splitlines()
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    # The script itself fails when the faked study still plans jobs; its own line says so too.
    assert re.search(r"^no-op run 1: .*, 0 jobs$", proc.stdout, re.MULTILINE), proc.stdout

    plan = workflow.snakemake("-n", "--quiet", "rules")
    total = re.search(r"^total\s+(\d+)$", plan.stdout + plan.stderr, re.MULTILINE)
    assert total and int(match[3]) == int(total[1])
