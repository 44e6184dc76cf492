"""A stand-in for the `peftstudy` command, for benchmarks/sweep_overhead.py only (never on the product path).

Placed first on PATH in the benchmark's scratch copy, it answers each `peftstudy run SPEC` a workflow rule calls in
milliseconds: every output the spec names, with content that its JSON schema (workflow/schemas/*.schema.yaml)
accepts. `select` and `collect` run the real code: they are pure, cheap and decide what the DAG does next (the
chosen grid point names the finals), and they check the stand-in's metrics against the metrics schema as they read
them. Stages the benchmark fakes before the run (downloads, extraction) are refused, so a job that should not run
fails loudly; a data source's job is answered only where the DAG plans it behind a checkpoint. Standard library
only: it starts in ~20 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REAL_STAGES = ("select", "collect")
PROVENANCE = {
    "code_version": "stand-in",
    "code_hash": "",
    "config_hash": "",
    "packages": {},
    "data_manifest_sha256": "",
    "backbone_sha256": None,
    "host": "",
    "python": "",
}


def write(path: str | Path, content: bytes | str) -> None:
    """Atomically: Snakemake must never see a half-written output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content.encode() if isinstance(content, str) else content)
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    write(path, json.dumps(obj, indent=1, sort_keys=True))


def score(gp: str) -> float:
    """A deterministic top-1 per grid point (in %), so that selection picks varied winners."""
    return int(gp[:4], 16) % 1000 / 10


def metrics(run: dict[str, Any], phase: str, gp: str, hp: dict, seed: int) -> dict[str, Any]:
    """A metrics.json the metrics schema accepts, of a run of a training spec's `run` settings."""
    top1 = score(gp)
    measured = {"val_top1": top1, "val_best_top1": top1} if phase == "tune" else {"test_top1": top1}
    return {
        "status": "ok",
        "phase": phase,
        "experiment": run["experiment"],
        "dataset": run["dataset"],
        "method": run["method"],
        "gp": gp,
        "hp": hp,
        "method_config": {},
        "recipe": run["recipe"],
        "seed": seed,
        "metrics": {"train_loss": 0.0, "train_top1": top1, **measured},
        "trainable_params": 0,
        "head_params": 0,
        "epochs_run": 0,
        "skipped_batches": 0,
        "wall_seconds": 0.0,
        "device": "stand-in",
        "precision": "fp32",
        "cached_features": False,
        "kept": "last",
        "provenance": PROVENANCE,
    }


def tune(spec: dict[str, Any]) -> None:
    # One file per tune job, holding each of its grid points' results (workflow/schemas/tune.schema.yaml).
    points = [metrics(spec["run"], "tune", p["gp"], p["hp"], spec["seed"]) for p in spec["points"]]
    write_json(spec["metrics"], {"points": points})


def final(spec: dict[str, Any]) -> None:
    gp, seed = spec["point"]["gp"], spec["seed"]
    write_json(spec["metrics"], metrics(spec["run"], "final", gp, spec["point"]["hp"], seed))
    write(spec["logits"], f"stand-in logits {gp} {seed}")
    write(spec["peft"], f"stand-in weights {gp} {seed}")


def ensemble(spec: dict[str, Any]) -> None:
    common = {"methods": spec["methods"], "seeds": []}
    write_json(
        spec["ensembles"],
        common
        | {
            "ensemble_methods": spec["methods"],
            "n_test": 0,
            "combination": "stand-in",
            "members": {},
            "ensembles": [],
            "seed_ensembles": {},
        },
    )
    write_json(spec["agreement"], common | {"confident_k": 1, "confidence": [], "pairs": [], "triples": [], "venn": []})


def robustness(spec: dict[str, Any]) -> None:
    shifted = [test_set["name"] for test_set in spec["shifted"]]
    common = {"method": spec["method"], "id_set": spec["in_distribution"]["name"], "ood_sets": shifted}
    write_json(
        spec["ood"],
        common | {"seeds": [], "id": 0.0, "ood": {}, "ood_mean": 0.0, "class_subsets": [], "per_seed": []},
    )
    write_json(spec["wise"], common | {"alphas": spec["alphas"], "points": [], "procedure": "stand-in"})


def tables(spec: dict[str, Any]) -> None:
    for path in spec["tables"].values():
        write(path, "stand-in\n")


def report(spec: dict[str, Any]) -> None:
    write(spec["html"], "<html>stand-in</html>\n")
    write(spec["executed"], json.dumps({"cells": []}))
    for path in spec["copies"].values():
        write(path, "stand-in\n")


def prepare(spec: dict[str, Any]) -> None:
    write(spec["cache"], "stand-in split cache")


SPEC_STAGES = {
    "prepare": prepare,
    "tune": tune,
    "final": final,
    "ensemble": ensemble,
    "robustness": robustness,
    "tables": tables,
    "report": report,
}


def data_source(spec: dict[str, Any]) -> None:
    """A data source's job planned behind a checkpoint (a test set only robustness reads, known once its selection
    is made): its folder and an empty manifest, as the benchmark fakes the data planned before the run. Every
    source's job writes these two (plan.sources), whatever its stage's name."""
    Path(spec["source"]).mkdir(parents=True, exist_ok=True)
    write(spec["manifest"], "")


def run(args: argparse.Namespace) -> None:
    """`peftstudy run SPEC`: the spec's JSON (plan.specs), read as plain JSON (no peftstudy import); the real
    stages' specs go to the real command."""
    text = Path(args.spec[1:]).read_text() if args.spec.startswith("@") else args.spec
    spec = json.loads(text)
    if spec["stage"] in REAL_STAGES:
        from peftstudy.cli import main as real_main

        real_main(["run", args.spec])
        return
    if spec["stage"] not in SPEC_STAGES and {"source", "manifest"} <= spec.keys():
        data_source(spec)
        return
    if spec["stage"] not in SPEC_STAGES:  # a job that should not run fails loudly
        raise SystemExit(f"peftstudy (stand-in): no stand-in for a {spec['stage']} job")
    SPEC_STAGES[spec["stage"]](spec)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="peftstudy (stand-in)")
    sub = top.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("run")
    p.add_argument("spec")
    p.set_defaults(func=run)
    return top


def main(argv: Sequence[str]) -> None:
    # A sub-command other than `run` fails here ("invalid choice"); arguments a stand-in does not need are ignored.
    args, _ = parser().parse_known_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
