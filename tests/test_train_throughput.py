"""benchmarks/train_throughput.py times every loop of a method --repeats times, in turns, after one warm-up each,
and reports the median and the range; fewer than three repetitions are refused."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "benchmarks/train_throughput.py"


def load():
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loops_are_warmed_up_then_timed_in_turns() -> None:
    bench = load()
    calls = []

    def timer(name: str, rates: list[float]):
        def timed(epochs: int) -> float:
            calls.append((name, epochs))
            return rates.pop(0)

        return timed

    loops = {"reference": timer("reference", [0.0, 10, 30, 20]), "engine": timer("engine", [0.0, 25, 40, 45])}
    rates = bench.timed_in_turns(loops, epochs=3, repeats=3)
    assert calls == [("reference", 1), ("engine", 1)] + [("reference", 3), ("engine", 3)] * 3
    assert rates == {"reference": [10, 30, 20], "engine": [25, 40, 45]}  # the warm-up's rate is not kept
    assert bench.spread(rates["engine"], ",.0f") == "40 (25–45)"
    ratios = [e / r for e, r in zip(rates["engine"], rates["reference"], strict=True)]
    assert bench.spread(ratios, ".2f", "x") == "2.25x (1.33–2.50)"


def test_fewer_than_three_repetitions_are_refused() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--repeats", "2"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--repeats 2: at least 3" in proc.stderr
