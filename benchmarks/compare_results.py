"""Compare two results trees of the same study bit for bit, apart from what a rerun may change by design.

A speed-up must leave every result as it was: the data, each run's metrics and logits, the trained tensors,
the selections, records, analyses and tables. What legitimately differs between two runs of the same code,
or of two versions of the code, is left out:

- provenance (the code's hash changes with any edit; the host, the packages) and each run's `wall_seconds`;
- logs and Snakemake's benchmark.tsv files (timings), epoch checkpoints under resume/, the report's
  HTML page and executed notebook (they print timings and the run's date), and specs/ (the job specs handed over
  as files: the jobs' inputs, not results);
- in a final record, the sha256 of a run's metrics.json (which holds provenance and wall time): the file itself
  is compared, value by value;
- in the tables, the columns of time and memory spent (and the code hash and version: provenance).

Everything else is compared exactly: JSON as parsed (floats equal, not close), .npz arrays by dtype, shape and
bytes, CSV cells as text, any other file byte for byte.

    python benchmarks/compare_results.py /path/a/results/mini /path/b/results/mini

Exit status 0 when the trees hold the same results; else each difference is printed, and the status is 1.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# Parts of a path (any folder or file name) that are never compared.
SKIPPED_NAMES = {"log.txt", "benchmark.tsv", "resume", "index.html", "figures.ipynb", ".snakemake", "specs"}
SKIPPED_SUFFIXES = (".log",)
# JSON keys that record when, where and with which code a result was made, not what it is.
VOLATILE_KEYS = {"provenance", "wall_seconds"}
# Files whose checksum a final record holds but whose bytes carry volatile content (compared value by value).
VOLATILE_CHECKSUMS = {"metrics.json"}
# Table columns of time and memory spent, and the code's hash and version (provenance).
VOLATILE_COLUMNS = {
    "seconds",
    "cpu_seconds",
    "max_rss_mb",
    "gpu_hours",
    "hours",
    "code_hash",
    "code_version",
    "wall_seconds",
}


def compared_files(root: Path) -> set[str]:
    """Every file under root that holds results, as a path relative to root."""
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file()
        and not SKIPPED_NAMES.intersection(path.relative_to(root).parts)
        and not path.name.endswith(SKIPPED_SUFFIXES)
    }


def stable_json(value: Any) -> Any:
    """The JSON value without its volatile keys (and a record's volatile checksums)."""
    if isinstance(value, dict):
        return {
            key: (
                {name: sum_ for name, sum_ in item.items() if name not in VOLATILE_CHECKSUMS}
                if key == "sha256" and isinstance(item, dict)
                else stable_json(item)
            )
            for key, item in value.items()
            if key not in VOLATILE_KEYS
        }
    if isinstance(value, list):
        return [stable_json(item) for item in value]
    return value


def stable_csv(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return rows
    kept = [i for i, column in enumerate(rows[0]) if column not in VOLATILE_COLUMNS]
    return [[row[i] for i in kept if i < len(row)] for row in rows]


def npz_differences(a: Path, b: Path) -> Iterator[str]:
    with np.load(a, allow_pickle=False) as left, np.load(b, allow_pickle=False) as right:
        if sorted(left.files) != sorted(right.files):
            yield f"arrays {sorted(left.files)} != {sorted(right.files)}"
            return
        for name in left.files:
            x, y = left[name], right[name]
            if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                yield f"array {name} differs ({x.dtype}{x.shape} vs {y.dtype}{y.shape})"


def file_differences(a: Path, b: Path) -> Iterator[str]:
    """What differs between two versions of one result file (nothing: the same result)."""
    if a.suffix == ".npz":
        yield from npz_differences(a, b)
    elif a.suffix == ".json":
        if stable_json(json.loads(a.read_text())) != stable_json(json.loads(b.read_text())):
            yield "JSON content differs"
    elif a.suffix == ".csv":
        if stable_csv(a.read_text()) != stable_csv(b.read_text()):
            yield "CSV content differs"
    elif a.read_bytes() != b.read_bytes():
        yield "bytes differ"


def differences(a: Path, b: Path) -> Iterator[str]:
    left, right = compared_files(a), compared_files(b)
    for path in sorted(left - right):
        yield f"{path}: only in {a}"
    for path in sorted(right - left):
        yield f"{path}: only in {b}"
    for path in sorted(left & right):
        for difference in file_differences(a / path, b / path):
            yield f"{path}: {difference}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="a results tree (results/<study>)")
    parser.add_argument("b", type=Path, help="the other")
    args = parser.parse_args(argv)
    found = list(differences(args.a, args.b))
    for line in found:
        print(line)
    print(f"{len(compared_files(args.a))} files compared, {len(found)} differences", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
