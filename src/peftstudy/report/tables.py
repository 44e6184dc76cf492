"""Tidy CSV tables from a study's result files: one row per observation, the report's only input."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

from peftstudy.io import atomic_path, read_json

ANALYSIS_PATH = re.compile(r"(?P<experiment>[^/]+)/(?P<dataset>[^/]+)/analysis/(?P<kind>ensembles|agreement)\.json$")


def tune_table(paths: list[str]) -> pd.DataFrame:
    frames = []
    for path in paths:
        frame = pd.read_csv(path)
        frame["selected"] = frame["gp"] == read_json(Path(path).with_name("selected.json"), schema="selected")["gp"]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def final_table(records: list[str]) -> pd.DataFrame:
    rows = []
    paths = [f"{r['dir']}/metrics.json" for record in records for r in read_json(record, schema="final")["runs"]]
    for path in paths:
        m = read_json(path, schema="metrics")
        rows.append(
            {
                "experiment": m["experiment"],
                "dataset": m["dataset"],
                "method": m["method"],
                "gp": m["gp"],
                "hp": json.dumps(m["hp"], sort_keys=True),
                "seed": m["seed"],
                "status": m["status"],
                "test_top1": m["metrics"].get("test_top1"),
                "test_loss": m["metrics"].get("test_loss"),
                "trainable_params": m["trainable_params"],
                "head_params": m["head_params"],
                "wall_seconds": m["wall_seconds"],
                "device": m["device"],
                "precision": m["precision"],
                "code_version": m["provenance"]["code_version"],
                "code_hash": m["provenance"]["code_hash"],
                "config_hash": m["provenance"]["config_hash"],
            }
        )
    return pd.DataFrame(rows)


def results_table(finals: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of test top-1 over seeds per (experiment, dataset, method)."""
    grouped = finals.groupby(["experiment", "dataset", "method"], sort=True)
    return grouped.agg(
        test_top1=("test_top1", "mean"),
        test_top1_std=("test_top1", "std"),
        seeds=("seed", "count"),
        trainable_params=("trainable_params", "first"),
        gp=("gp", "first"),
    ).reset_index()


DATASET_KEY = ["experiment", "dataset"]
ANALYSIS_COLUMNS = {
    "ensembles": [
        *DATASET_KEY,
        *("members", "size", "top1", "logit_top1", "vote_top1", "best_member_top1", "gain", "oracle_top1"),
    ],
    "seed_ensembles": [
        *DATASET_KEY,
        *("method", "seeds", "top1", "logit_top1", "vote_top1", "mean_seed_top1", "gain", "oracle_top1"),
    ],
    "agreement": [*DATASET_KEY, "a", "b", "agreement", "kappa", "wrong_jaccard", "confident_jaccard"],
    "triples": [*DATASET_KEY, "members", "agreement", "wrong_jaccard", "confident_jaccard"],
    "venn": [*DATASET_KEY, "kind", "members", "size", "seed", "region", "count"],
    "confidence": [
        *DATASET_KEY,
        *("method", "seed", "top1", "mean_confidence", "confidence_right", "confidence_wrong", "wrong"),
        "confident_top1",
    ],
}


def analysis_tables(paths: list[str]) -> dict[str, pd.DataFrame]:
    """The analysis JSONs as tidy tables (ANALYSIS_COLUMNS); method sets are joined with '+', as Venn regions."""
    rows: dict[str, list[dict]] = {name: [] for name in ANALYSIS_COLUMNS}
    for path in paths:
        match = ANALYSIS_PATH.search(path)
        if match is None:
            raise ValueError(f"{path}: not an analysis/ensembles.json or analysis/agreement.json")
        key = {"experiment": match["experiment"], "dataset": match["dataset"]}
        data = read_json(path, schema=match["kind"])
        if match["kind"] == "ensembles":
            for e in data["ensembles"]:
                rows["ensembles"].append({**key, **e, "members": "+".join(e["members"]), "size": len(e["members"])})
            for method, e in data["seed_ensembles"].items():
                rows["seed_ensembles"].append({**key, **e, "method": method, "seeds": len(e["seeds"])})
        else:
            rows["agreement"] += [{**key, **pair} for pair in data["pairs"]]
            rows["triples"] += [{**key, **t, "members": "+".join(t["members"])} for t in data["triples"]]
            rows["confidence"] += [{**key, **c} for c in data["confidence"]]
            rows["venn"] += [
                {**key, **v, "members": "+".join(v["members"]), "size": len(v["members"]), "region": r, "count": n}
                for v in data["venn"]
                for r, n in v["regions"].items()
            ]
    return {name: pd.DataFrame(rows[name], columns=columns) for name, columns in ANALYSIS_COLUMNS.items()}


def robustness_tables(paths: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    ood, wise = [], []
    for path in paths:
        if path.endswith("ood.json"):
            d = read_json(path, schema="ood")
            ood.append({"method": d["method"], "set": d["id_set"], "kind": "id", "top1": d["id"]})
            ood += [{"method": d["method"], "set": k, "kind": "ood", "top1": v} for k, v in d["ood"].items()]
        else:
            d = read_json(path, schema="wise")
            wise += [
                {
                    "method": d["method"],
                    "variant": p["variant"],
                    "alpha": p["alpha"],
                    "id_top1": p["id"],
                    "ood_mean_top1": p["ood_mean"],
                    **{f"{name}_top1": v for name, v in p["ood"].items()},
                    "procedure": d["procedure"],
                }
                for p in d["points"]
            ]
    wise_columns = ["method", "variant", "alpha", "id_top1", "ood_mean_top1"]
    wise_frame = pd.DataFrame(wise)
    extra = [c for c in wise_frame.columns if c not in wise_columns]
    return (
        pd.DataFrame(ood, columns=["method", "set", "kind", "top1"]),
        wise_frame.reindex(columns=wise_columns + extra),
    )


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def run(args: argparse.Namespace) -> None:
    out = Path(args.out_dir)
    finals = final_table(args.finals)
    ood, wise = robustness_tables(args.robustness)
    tables = {
        "tune": tune_table(args.tune),
        "final": finals,
        "results": results_table(finals).assign(study=args.study, config_hash=args.config_hash),
        **analysis_tables(args.analysis),
        "ood": ood,
        "wise": wise,
    }
    for name, frame in tables.items():
        write_csv(frame, out / f"{name}.csv")
        print(f"{name}.csv: {len(frame)} rows", flush=True)
