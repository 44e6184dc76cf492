"""benchmarks/record.py: a figure is recorded with its repetitions, their spread, the machine and the raw output,
never from fewer than three runs or from a failed one, and a record is never overwritten."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

RECORD = [sys.executable, str(REPO / "benchmarks/record.py")]
# Each repetition prints the next of 3, 1, 2 (a counter in a file): the median is 2, the range 1 to 3.
PRINTS = (
    "import pathlib; p = pathlib.Path('n'); n = int(p.read_text()) if p.exists() else 0; p.write_text(str(n + 1));"
    "print(f'speedup={[3, 1, 2][n]}.5x rate[lora/engine fp32]=1,{n}00 n=800,'); print('chatter', 2 * n)"
)


def run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RECORD, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_a_record_holds_each_repetition_its_spread_and_the_machine(tmp_path) -> None:
    out = tmp_path / "results"
    picked = ["--figure", r"lines=^chatter (\d+)$"]
    proc = run(tmp_path, "demo", "--results", str(out), *picked, "--", sys.executable, "-c", PRINTS)
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("demo-*.json")
    record = json.loads(path.read_text())
    assert len(record["repetitions"]) == 3
    assert [r["output"].splitlines()[1] for r in record["repetitions"]] == ["chatter 0", "chatter 2", "chatter 4"]
    assert record["figures"]["lines"]["values"] == [0, 2, 4]
    assert record["figures"]["speedup"] | {"values": None} == {"values": None, "median": 2.5, "min": 1.5, "max": 3.5}
    assert record["figures"]["rate[lora/engine fp32]"]["values"] == [1000, 1100, 1200]
    assert "n" not in record["figures"]  # `n=800,` is part of a repr, not a figure
    assert record["figures"]["wall_s"]["min"] > 0
    assert record["machine"]["cores_usable"] >= 1 and record["machine"]["cpu_model"]
    assert len(record["load_before"]) == 3 and len(record["repetitions"][0]["load_after"]) == 3
    assert record["commit"] and path.name.startswith(f"demo-{record['date'][:10]}")
    # The same day again: a second file, the first untouched.
    again = run(tmp_path, "demo", "--results", str(out), "--", sys.executable, "-c", "print('speedup=1x')")
    assert again.returncode == 0, again.stderr
    assert json.loads(path.read_text()) == record
    assert {p.name for p in out.glob("demo-*.json")} == {path.name, path.name.replace(".json", "-2.json")}
    shown = run(tmp_path, "--show", str(path))
    assert "| speedup | 2.5 | 1.5 | 3.5 |" in shown.stdout


def test_fewer_than_three_repetitions_or_a_failed_one_records_nothing(tmp_path) -> None:
    out = tmp_path / "results"
    two = run(tmp_path, "demo", "--repeat", "2", "--results", str(out), "--", "true")
    assert two.returncode != 0 and "at least 3" in two.stderr
    # The second repetition fails: the first's figures are not kept either.
    flaky = "import pathlib, sys; p = pathlib.Path('m'); sys.exit(1 if p.exists() else p.touch())"
    failed = run(tmp_path, "demo", "--results", str(out), "--", sys.executable, "-c", flaky)
    assert failed.returncode != 0 and "repetition 2" in failed.stderr and "nothing recorded" in failed.stderr
    assert not out.exists() or not list(out.iterdir())


def test_setup_runs_before_each_repetition(tmp_path) -> None:
    out = tmp_path / "results"
    # The command fails if the previous repetition's file is still there: the setup removes it.
    once = "import pathlib, sys; p = pathlib.Path('left'); sys.exit(1 if p.exists() else p.touch())"
    proc = run(tmp_path, "clean", "--setup", "rm -f left", "--results", str(out), "--", sys.executable, "-c", once)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(next(out.glob("clean-*.json")).read_text())["setup"] == "rm -f left"
