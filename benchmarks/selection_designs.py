"""Selection designs: what each way of choosing grid points costs Snakemake's main loop, on a toy of the study.

The toy has the study's shape (datasets x methods x grid points; tune, select, final, collect, ensemble) with
shell jobs that only write small files, and three designs of the selection:

- method:  one checkpoint per (dataset, method), as workflow/rules/select.smk today;
- dataset: one checkpoint per dataset choosing every method's point (one selected.json for the dataset);
- static:  no checkpoint: `select` a plain rule, the final reads the choice from its selected.json (its path no
           longer names the grid point).

Every tune output exists before the timed run (faked, older than nothing it reads), as when the sweep's tune
stage is done: the run is selection and what follows it, over a DAG that still holds every tune job, which is
what each checkpoint's re-evaluation walks. Snakemake's own CPU time is read as benchmarks/sweep_overhead.py
reads it. Then the exactness check of docs/scale.md §5: a grid point that does not win is added to every grid,
and the second run must tune only the new point and select again (no final, no collect rerun), which the static
design fails.

    python benchmarks/selection_designs.py --datasets 2 4 8 --methods 16 --grid 32
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from dag_scale import SNAKEMAKE
from sweep_overhead import run_measured

DESIGNS = ("method", "dataset", "static")
RULE_RUN = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$", re.MULTILINE)

COMMON = """
import json

D = [f"d{i}" for i in range(config["datasets"])]
M = [f"m{i}" for i in range(config["methods"])]
G = [f"g{i:04d}" for i in range(config["grid"])] + config.get("extra", [])

def score(g):
    # the winner of every (dataset, method): g0000, unless a point named "gwin..." is added
    return 2 if g.startswith("gwin") else (1 if g == "g0000" else 0)

localrules: select, collect, ensemble, all

rule tune:
    output: "tune/{d}/{m}/{g}.json"
    shell: "echo '{{\\"gp\\": \\"{wildcards.g}\\"}}' > {output}"

rule ensemble:
    input: lambda wc: expand("collect/{d}/{m}.json", d=wc.d, m=M)
    output: "ensemble/{d}.json"
    shell: "cat {input} > {output}"
"""

PER_CHECKPOINT = """
def chosen(d, m):
    with open(checkpoints.select.get(**SELECT_KEY(d, m)).output[0]) as f:
        return json.load(f)[m] if PER_DATASET else json.load(f)["gp"]

rule final:
    output: "final/{d}/{m}/{g}/metrics.json"
    shell: "echo final > {output}"

rule collect:
    input: lambda wc: f"final/{wc.d}/{wc.m}/{chosen(wc.d, wc.m)}/metrics.json"
    output: "collect/{d}/{m}.json"
    shell: "cat {input} > {output}"

rule all:
    input:
        expand("ensemble/{d}.json", d=D),
        lambda wc: [f"final/{d}/{m}/{chosen(d, m)}/metrics.json" for d in D for m in M],
"""

METHOD = (
    COMMON
    + """
PER_DATASET = False
SELECT_KEY = lambda d, m: dict(d=d, m=m)

checkpoint select:
    input: lambda wc: expand("tune/{d}/{m}/{g}.json", d=wc.d, m=wc.m, g=G)
    output: "select/{d}/{m}/selected.json"
    params: choice=json.dumps({"gp": max(G, key=score)})
    shell: "echo '{params.choice}' > {output}"
"""
    + PER_CHECKPOINT
)

DATASET = (
    COMMON
    + """
PER_DATASET = True
SELECT_KEY = lambda d, m: dict(d=d)

checkpoint select:
    input: lambda wc: expand("tune/{d}/{m}/{g}.json", d=wc.d, m=M, g=G)
    output: "select/{d}/selected.json"
    params: choice=json.dumps({m: max(G, key=score) for m in M})
    shell: "echo '{params.choice}' > {output}"
"""
    + PER_CHECKPOINT
)

STATIC = (
    COMMON
    + """
rule select:
    input: lambda wc: expand("tune/{d}/{m}/{g}.json", d=wc.d, m=wc.m, g=G)
    output: "select/{d}/{m}/selected.json"
    params: choice=json.dumps({"gp": max(G, key=score)})
    shell: "echo '{params.choice}' > {output}"

rule final:
    input: "select/{d}/{m}/selected.json"
    output: "final/{d}/{m}/metrics.json"
    shell: "echo final > {output}"

rule collect:
    input: "final/{d}/{m}/metrics.json"
    output: "collect/{d}/{m}.json"
    shell: "cat {input} > {output}"

rule all:
    input: expand("ensemble/{d}.json", d=D)
"""
)

SNAKEFILES = {"method": METHOD, "dataset": DATASET, "static": STATIC}


def fake_tunes(root: Path, datasets: int, methods: int, grid: int) -> None:
    then = time.time() - 3600
    for d in range(datasets):
        for m in range(methods):
            folder = root / "tune" / f"d{d}" / f"m{m}"
            folder.mkdir(parents=True)
            for g in range(grid):
                path = folder / f"g{g:04d}.json"
                path.write_text(json.dumps({"gp": f"g{g:04d}"}))
                os.utime(path, (then, then))


def ran(output: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rule in RULE_RUN.findall(output):
        counts[rule] = counts.get(rule, 0) + 1
    return counts


def measure(scratch: Path, design: str, datasets: int, methods: int, grid: int) -> str:
    root = scratch / f"{design}-{datasets}"
    root.mkdir()
    snakefile = root / "Snakefile"
    snakefile.write_text(SNAKEFILES[design])
    os.utime(snakefile, (time.time() - 7200,) * 2)
    fake_tunes(root, datasets, methods, grid)
    size = ["--config", f"datasets={datasets}", f"methods={methods}", f"grid={grid}"]
    cmd = [str(SNAKEMAKE), "all", "--cores", "2", "--scheduler", "greedy", *size]
    first = run_measured(cmd, root, dict(os.environ), root / "run.log")
    if first.returncode != 0:
        raise SystemExit(f"{design}: {first.output[-5000:]}")
    checkpoints = datasets * methods if design == "method" else datasets if design == "dataset" else 0
    tune_jobs = datasets * methods * grid
    # A point that does not win, added to every grid: what reruns?
    edit = run_measured([*cmd, "extra=[g9999]"], root, dict(os.environ), root / "edit.log")
    if edit.returncode != 0:
        raise SystemExit(f"{design} (edit): {edit.output[-5000:]}")
    reran = ran(edit.output)
    return (
        f"design={design} datasets={datasets} tune_jobs={tune_jobs} checkpoints={checkpoints}:"
        f" Snakemake CPU {first.cpu:.2f} s (wall {first.wall:.1f} s, {ran(first.output)});"
        f" after a non-winning grid point: CPU {edit.cpu:.2f} s, ran {reran}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--methods", type=int, default=16)
    parser.add_argument("--grid", type=int, default=32, help="grid points per method (tune jobs)")
    parser.add_argument("--designs", nargs="+", choices=DESIGNS, default=list(DESIGNS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="selection_designs.") as scratch:
        for datasets in args.datasets:
            for design in args.designs:
                print(measure(Path(scratch), design, datasets, args.methods, args.grid), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
