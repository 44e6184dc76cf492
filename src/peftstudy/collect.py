"""One record per (experiment, dataset, method) of its selected finals: what analysis and tables read.

`final.json` lists each seed's run folder with the sha256 of its metrics, logits and weights, so a
consumer reruns exactly when a final's outputs change, and each consumer job resolves its own
selection checkpoint (Snakemake stops an input function at the first unresolved one). When every grid
point diverged it says so (`status: all-diverged`, no runs), for the analysis to leave the method out and
the tables to show it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from peftstudy.io import read_json, sha256_file, validate, write_json
from peftstudy.select import ALL_DIVERGED

FILES = ("metrics.json", "logits.npz", "peft.safetensors")


def run(args: argparse.Namespace) -> None:
    # The (dataset, method)'s own entry of the experiment's selected.json: passed as a value, not the file, so that
    # a change of another choice there reruns no collect of this one.
    selected = args.choice
    validate({"datasets": {args.dataset: {args.method: selected}}}, "selected")
    if selected.get("status") == ALL_DIVERGED:
        if args.metrics:
            raise ValueError(f"{args.method} on {args.dataset}: every grid point diverged, yet final runs were given")
        record = {"experiment": args.experiment, "dataset": args.dataset, "method": args.method}
        write_json(args.out, record | {"status": ALL_DIVERGED, "tune_runs": selected["runs"], "runs": []}, "final")
        return
    runs = []
    for path in args.metrics:
        folder = Path(path).parent
        metrics = read_json(path, schema="metrics")
        if metrics["phase"] != "final":
            raise ValueError(f"{path}: not a final run")
        runs.append(
            {
                "seed": metrics["seed"],
                "dir": str(folder),
                "status": metrics["status"],
                "test_top1": metrics["metrics"].get("test_top1"),
                "sha256": {name: sha256_file(folder / name) for name in FILES},
            }
        )
    first = read_json(args.metrics[0], schema="metrics")
    if len({(r["dir"].rsplit("/", 2)[0]) for r in runs}) != 1:
        raise ValueError("collect takes the seeds of one grid point")
    write_json(
        args.out,
        {key: first[key] for key in ("experiment", "dataset", "method", "gp", "hp", "trainable_params")}
        | {"runs": sorted(runs, key=lambda r: r["seed"])},
        schema="final",
    )
