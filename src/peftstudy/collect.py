"""One record per (experiment, dataset, method) of its selected finals: what analysis and tables read.

`final.json` lists each seed's run folder with the sha256 of its metrics, logits and weights, so a
consumer reruns exactly when a final's outputs change, and each consumer job resolves its own
selection checkpoint (Snakemake stops an input function at the first unresolved one). When every grid
point diverged it says so (`status: all-diverged`, no runs), for the analysis to leave the method out and
the tables to show it.
"""

from __future__ import annotations

from pathlib import Path

from peftstudy.io import read_json, sha256_file, validate, write_json
from peftstudy.plan.specs import FINAL_FILES, Options
from peftstudy.plan.stage_specs import CollectSpec
from peftstudy.select import ALL_DIVERGED


def run(spec: CollectSpec, options: Options) -> None:
    # The (dataset, method)'s own entry of the experiment's selected.json: passed as a value, not the file, so that
    # a change of another choice there reruns no collect of this one.
    selected = dict(spec.choice)
    validate({"datasets": {spec.dataset: {spec.method: selected}}}, "selected")
    if selected.get("status") == ALL_DIVERGED:
        if spec.metrics:
            raise ValueError(f"{spec.method} on {spec.dataset}: every grid point diverged, yet final runs were given")
        record = {"experiment": spec.experiment, "dataset": spec.dataset, "method": spec.method}
        write_json(spec.record, record | {"status": ALL_DIVERGED, "tune_runs": selected["runs"], "runs": []}, "final")
        return
    finals = {Path(path): read_json(path, schema="metrics") for path in spec.metrics}
    for path, metrics in finals.items():
        if metrics["phase"] != "final":
            raise ValueError(f"{path}: not a final run")
    points = sorted({(m["experiment"], m["dataset"], m["method"], m["gp"]) for m in finals.values()})
    if len(points) != 1:
        raise ValueError(f"collect takes the seeds of one grid point, not of {len(points)}: {points}")
    runs = [
        {
            "seed": metrics["seed"],
            "dir": str(path.parent),
            "status": metrics["status"],
            "test_top1": metrics["metrics"].get("test_top1"),
            "sha256": {name: sha256_file(path.parent / name) for name in FINAL_FILES},
        }
        for path, metrics in finals.items()
    ]
    first = next(iter(finals.values()))
    write_json(
        spec.record,
        {key: first[key] for key in ("experiment", "dataset", "method", "gp", "hp", "trainable_params")}
        | {"runs": sorted(runs, key=lambda r: r["seed"])},
        schema="final",
    )
