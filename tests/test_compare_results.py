"""benchmarks/compare_results.py: two results trees hold the same results when only time, provenance and logs
differ; any other change, of a value, an array, a table cell or a file's bytes, or a file missing, is named."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("compare_results", REPO / "benchmarks/compare_results.py")
compare_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_results)


def write_tree(root: Path, *, top1: float = 50.0, wall: float = 1.0, code: str = "aaaa", logit: float = 0.5) -> Path:
    run = root / "vtab/count/lora/final/gp/seed0"
    run.mkdir(parents=True)
    metrics = {"metrics": {"test_top1": top1}, "wall_seconds": wall, "provenance": {"code_hash": code}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    np.savez(run / "logits.npz", logits=np.array([[logit, 1.0]], dtype=np.float32))
    (run / "peft.safetensors").write_bytes(b"tensors")
    (run / "log.txt").write_text(f"took {wall} s")
    (run / "benchmark.tsv").write_text(f"s\n{wall}\n")
    record = {"runs": [{"sha256": {"metrics.json": code, "logits.npz": "same", "peft.safetensors": "same"}}]}
    (root / "vtab/count/lora/final.json").write_text(json.dumps(record))
    (root / "tables").mkdir()
    (root / "tables/compute.csv").write_text(f"method,seconds,cpu_seconds\nlora,{wall},{wall}\n")
    (root / "tables/final.csv").write_text(f"method,test_top1\nlora,{top1}\n")
    return root


def test_trees_differing_in_time_provenance_and_logs_only_hold_the_same_results(tmp_path):
    a = write_tree(tmp_path / "a")
    b = write_tree(tmp_path / "b", wall=9.0, code="bbbb")
    assert list(compare_results.differences(a, b)) == []
    assert compare_results.main([str(a), str(b)]) == 0


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            {"top1": 51.0},
            ["tables/final.csv: CSV content differs", "final/gp/seed0/metrics.json: JSON content differs"],
        ),
        ({"logit": 0.25}, ["logits.npz: array logits differs"]),
    ],
)
def test_a_changed_result_is_named(tmp_path, change, named):
    a, b = write_tree(tmp_path / "a"), write_tree(tmp_path / "b", **change)
    found = list(compare_results.differences(a, b))
    assert len(found) == len(named) and all(any(part in line for line in found) for part in named)
    assert compare_results.main([str(a), str(b)]) == 1


def test_changed_bytes_and_a_missing_file_are_named(tmp_path):
    a, b = write_tree(tmp_path / "a"), write_tree(tmp_path / "b")
    (b / "vtab/count/lora/final/gp/seed0/peft.safetensors").write_bytes(b"other")
    (a / "tables/extra.csv").write_text("x\n1\n")
    assert list(compare_results.differences(a, b)) == [
        f"tables/extra.csv: only in {a}",
        "vtab/count/lora/final/gp/seed0/peft.safetensors: bytes differ",
    ]
