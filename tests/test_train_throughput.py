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


def test_the_readme_table_comes_from_a_record_of_three_runs() -> None:
    """Each cell: the median and range over the record's runs; a run's speedup is its rate over its own reference."""
    bench = load()

    def run(reference: int, engine: int, cached: int, lora_ref: int, lora: int) -> dict:
        rows = {
            "linear/reference": reference,
            "linear/engine fp32, live backbone": engine,
            "linear/cached features": cached,
            "lora/reference": lora_ref,
            "lora/engine fp32": lora,
        }
        return {"output": "chatter\n" + "\n".join(f"rate[{k}]={v}" for k, v in rows.items()), **rows}

    runs = [run(100, 200, 600, 50, 75), run(80, 200, 500, 50, 80), run(100, 150, 400, 40, 80)]
    names = [key for key in runs[0] if key != "output"]
    figures = {f"rate[{k}]": {"values": [r[k] for r in runs]} for k in names}
    figures["speedup"] = {"values": [1.73, 2.0, 1.73]}
    figures["decode_img_per_s"] = {"values": [12000, 13000, 11000]}
    record = {
        "command": ["python", "benchmarks/train_throughput.py"],
        "date": "2026-12-06T22:00:00+00:00",
        "machine": {"cpu_model": "CPU X", "cores_usable": 2},
        "load_before": [0.3, 0.2, 0.1],
        "load_after": [1.1, 0.5, 0.2],
        "repetitions": [{"output": r["output"]} for r in runs],
        "figures": dict(sorted(figures.items())),  # as record.py writes them: sorted by name
    }
    table = bench.table_from_record(record)
    assert "3 runs of `python benchmarks/train_throughput.py` (2026-12-06T22:00:00+00:00, CPU X, 2 cores" in table
    assert (
        "load average 0.3 before, 1.1 after" in table and "decode of the split: 12,000 (11,000–13,000) img/s" in table
    )
    rows = [line for line in table.splitlines() if line.startswith("| linear") or line.startswith("| lora")]
    assert rows == [
        "| linear | reference | 100 (80–100) | 1x |",
        "| linear | engine fp32, live backbone | 200 (150–200) | 2.00x (1.50–2.50) |",
        "| linear | cached features | 500 (400–600) | (6.00x (4.00–6.25), other computation: not counted) |",
        "| lora | reference | 50 (40–50) | 1x |",
        "| lora | engine fp32 | 80 (75–80) | 1.60x (1.50–2.00) |",
    ]
    assert table.endswith("`speedup=1.73x (1.73–2.00)`.")
