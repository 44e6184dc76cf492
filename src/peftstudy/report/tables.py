"""Tidy CSV tables from a study's result files: one row per observation, the report's only input."""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from peftstudy.io import atomic_path, read_json
from peftstudy.select import ALL_DIVERGED, chosen_gp

ANALYSIS_PATH = re.compile(r"(?P<experiment>[^/]+)/(?P<dataset>[^/]+)/analysis/(?P<kind>ensembles|agreement)\.json$")
# Where each training job's benchmark.tsv lies (DESIGN.md §4): tune/<gp or pack>/, final/<gp>/<seed or seeds>/.
BENCHMARK_PATHS = (
    re.compile(
        r"(?P<experiment>[^/]+)/(?P<dataset>[^/]+)/(?P<method>[^/]+)/(?P<phase>tune)/(?P<job>[^/]+)/benchmark\.tsv$"
    ),
    re.compile(
        r"(?P<experiment>[^/]+)/(?P<dataset>[^/]+)/(?P<method>[^/]+)/(?P<phase>final)/(?P<job>[^/]+/[^/]+)/benchmark\.tsv$"
    ),
    re.compile(r"(?P<phase>robustness)/(?P<method>[^/]+)/benchmark\.tsv$"),
    re.compile(r"(?P<phase>pretrain)/benchmark\.tsv$"),
)
# VTAB-1K's groups (STUDY.md C.7), by the processed folder names.
VTAB_GROUPS = {
    "Natural": ("cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"),
    "Specialized": ("patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"),
    "Structured": (
        "clevr_count",
        "clevr_dist",
        "dmlab",
        "kitti",
        "dsprites_loc",
        "dsprites_ori",
        "smallnorb_azi",
        "smallnorb_ele",
    ),
}
VTAB_TASKS = tuple(t for tasks in VTAB_GROUPS.values() for t in tasks)
MEAN_TASKS, MEAN_GROUPS = "mean over tasks", "mean over groups"


def group_of(dataset: str, context: dict[str, Any]) -> str:
    """The config's `group`, else the VTAB group, else the dataset is a group of its own."""
    spec = context["datasets"].get(dataset, {})
    vtab = next((g for g, tasks in VTAB_GROUPS.items() if dataset in tasks), None)
    return spec.get("group") or vtab or dataset


def tune_table(paths: list[str]) -> pd.DataFrame:
    frames = []
    for path in paths:
        frame = pd.read_csv(path)
        frame["selected"] = frame["gp"] == chosen_gp(Path(path).with_name("selected.json"))  # None: all diverged
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def all_diverged(records: list[str]) -> list[tuple[str, str, str]]:
    """The (experiment, dataset, method) runs whose every grid point diverged (final.json says so)."""
    found = []
    for path in records:
        record = read_json(path, schema="final")
        if record.get("status") == ALL_DIVERGED:
            found.append((record["experiment"], record["dataset"], record["method"]))
    return found


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
                "host": m["provenance"]["host"],
                "precision": m["precision"],
                "code_version": m["provenance"]["code_version"],
                "code_hash": m["provenance"]["code_hash"],
                "config_hash": m["provenance"]["config_hash"],
            }
        )
    return pd.DataFrame(rows)


RUN_KEY = ["experiment", "dataset", "method"]


def results_table(finals: pd.DataFrame, diverged: list[tuple[str, str, str]] = ()) -> pd.DataFrame:
    """Mean and std of test top-1 over seeds per (experiment, dataset, method); a run whose every grid point
    diverged is a row of its own, status all-diverged and no score."""
    columns = [*RUN_KEY, "test_top1", "test_top1_std", "seeds", "trainable_params", "gp", "status"]
    done = (
        finals.groupby(RUN_KEY, sort=True)
        .agg(
            test_top1=("test_top1", "mean"),
            test_top1_std=("test_top1", "std"),
            seeds=("seed", "count"),
            trainable_params=("trainable_params", "first"),
            gp=("gp", "first"),
        )
        .reset_index()
        .assign(status="ok")
        if len(finals)
        else pd.DataFrame(columns=columns)
    )
    failed = pd.DataFrame([dict(zip(RUN_KEY, key, strict=True), seeds=0, status=ALL_DIVERGED) for key in diverged])
    frames = [f for f in (done[columns], failed.reindex(columns=columns)) if len(f)]
    merged = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return merged.sort_values(RUN_KEY, ignore_index=True)


def datasets_table(context: dict[str, Any], manifests: list[str]) -> pd.DataFrame:
    """One row per dataset trained or tested on: its report group, size_of, classes and split sizes."""
    rows = []
    for path in manifests:
        m = read_json(path, schema="manifest")
        sizes = m["sizes"]
        spec = context["datasets"].get(m["dataset"], {})
        rows.append(
            {
                "dataset": m["dataset"],
                "group": group_of(m["dataset"], context),
                "size_of": spec.get("size_of", ""),
                "classes": m["classes"],
                "train": sizes.get("train800.txt", 0),
                "val": sizes.get("val200.txt", 0),
                "trainval": sizes.get("train800val200.txt", 0),
                "test": sizes.get("test.txt", 0),
            }
        )
    return pd.DataFrame(rows, columns=["dataset", "group", "size_of", "classes", "train", "val", "trainval", "test"])


def experiments_table(context: dict[str, Any]) -> pd.DataFrame:
    """One row per (experiment, method) as planned: grid size, seeds, selection rule and recipe switches."""
    rows = []
    for name, exp in context["experiments"].items():
        for method, points in exp["grid_points"].items():
            rows.append(
                {
                    "experiment": name,
                    "method": method,
                    "datasets": len(exp["datasets"]),
                    "grid_points": points,
                    "seeds": " ".join(map(str, exp["seeds"])),
                    "head": exp["head"],
                    "tie_break": exp["tie_break"],
                    "robustness": name == context.get("robustness_experiment"),
                    **exp["recipe"],
                }
            )
    return pd.DataFrame(rows)


def compute_table(benchmarks: list[str]) -> pd.DataFrame:
    """Snakemake's benchmark of every training job: wall and CPU seconds, peak memory."""
    rows = []
    for path in benchmarks:
        match = next((m for m in (p.search(path) for p in BENCHMARK_PATHS) if m), None)
        if match is None:
            raise ValueError(f"{path}: not a benchmark.tsv of a tune, final, robustness or pretrain job")
        bench = pd.read_csv(path, sep="\t", na_values=["-", "NA"])
        # Several rows only when a rule repeats its benchmark: all of them were spent.
        rows.append(
            {
                "phase": match["phase"],
                "experiment": match.groupdict().get("experiment") or "",
                "dataset": match.groupdict().get("dataset") or "",
                "method": match.groupdict().get("method") or "",
                "job": match.groupdict().get("job") or "",
                "seconds": float(bench["s"].sum()),
                "cpu_seconds": float(bench["cpu_time"].sum()),
                "max_rss_mb": float(bench["max_rss"].max()),
            }
        )
    return pd.DataFrame(
        rows, columns=["phase", "experiment", "dataset", "method", "job", "seconds", "cpu_seconds", "max_rss_mb"]
    )


def read_authors(path: str | Path) -> pd.DataFrame:
    """An authors_*.csv: its `#` lines name the source, the rest is the table."""
    return pd.read_csv(path, comment="#")


def authors_top1(authors: pd.DataFrame | None, dataset: str, method: str) -> float:
    if authors is None or dataset not in authors.columns or method not in set(authors["method"]):
        return math.nan
    return float(authors.loc[authors["method"] == method, dataset].iloc[0])


def vtab_table(results: pd.DataFrame, context: dict[str, Any], authors: pd.DataFrame | None) -> pd.DataFrame:
    """Every planned (experiment, dataset, method), ours (NaN while missing) beside the authors' (NaN where they
    have none: a non-VTAB dataset or method) and the difference."""
    ours = results.set_index(["experiment", "dataset", "method"]) if len(results) else None
    rows = []
    for name, exp in context["experiments"].items():
        for dataset in exp["datasets"]:
            for method in exp["grid_points"]:
                key = (name, dataset, method)
                have = ours is not None and key in ours.index
                row = ours.loc[key] if have else None
                mine = float(row["test_top1"]) if have else math.nan
                theirs = authors_top1(authors, dataset, method)
                rows.append(
                    {
                        "experiment": name,
                        "group": group_of(dataset, context),
                        "dataset": dataset,
                        "method": method,
                        "status": row.get("status", "ok") if have else "missing",
                        "test_top1": mine,
                        "test_top1_std": float(row["test_top1_std"]) if have else math.nan,
                        "seeds": int(row["seeds"]) if have else 0,
                        "trainable_params": int(row["trainable_params"]) if have and row["seeds"] else math.nan,
                        "authors_top1": theirs,
                        "diff": mine - theirs,
                    }
                )
    columns = ["experiment", "group", "dataset", "method", "test_top1", "test_top1_std", "seeds"]
    return pd.DataFrame(rows, columns=[*columns, "trainable_params", "authors_top1", "diff", "status"])


def _mean(values: pd.Series) -> float:
    """The mean only when every value is there: a mean over the tasks done so far is no group mean."""
    return float(values.mean()) if len(values) and values.notna().all() else math.nan


def group_means(vtab: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, method): each group's mean, the mean over tasks and the mean over the group means,
    ours and the authors' over the same tasks (STUDY.md C.7: which overall mean the paper uses is unknown)."""
    rows = []
    for (experiment, method), frame in vtab.groupby(["experiment", "method"], sort=False):
        groups = list(dict.fromkeys(frame["group"]))
        means = {}
        for group in groups:
            part = frame[frame["group"] == group]
            means[group] = (_mean(part["test_top1"]), _mean(part["authors_top1"]), len(part))
        ours_groups = pd.Series([m[0] for m in means.values()])
        theirs_groups = pd.Series([m[1] for m in means.values()])
        means[MEAN_TASKS] = (_mean(frame["test_top1"]), _mean(frame["authors_top1"]), len(frame))
        means[MEAN_GROUPS] = (_mean(ours_groups), _mean(theirs_groups), len(frame))
        for group, (ours, theirs, n) in means.items():
            row = {"experiment": experiment, "method": method, "group": group, "tasks": n}
            rows.append({**row, "test_top1": ours, "authors_top1": theirs, "diff": ours - theirs})
    columns = ["experiment", "method", "group", "tasks", "test_top1", "authors_top1", "diff"]
    return pd.DataFrame(rows, columns=columns)


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
    """ID/OOD accuracy and WiSE curves; a method whose every grid point diverged has neither (results says so)."""
    ood, wise = [], []
    for path in paths:
        if path.endswith("ood.json"):
            d = read_json(path, schema="ood")
            if d.get("status") == ALL_DIVERGED:
                continue
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
    context = json.loads(args.context)
    finals = final_table(args.finals)
    results = results_table(finals, all_diverged(args.finals)).assign(study=args.study, config_hash=args.config_hash)
    authors = {Path(p).stem: p for p in args.authors}
    vtab1k = read_authors(authors["authors_vtab1k"]) if "authors_vtab1k" in authors else None
    vtab = vtab_table(results, context, vtab1k)
    ood, wise = robustness_tables(args.robustness)
    tables = {
        "tune": tune_table(args.tune),
        "final": finals,
        "results": results,
        "vtab": vtab,
        "group_means": group_means(vtab),
        "datasets": datasets_table(context, args.manifests),
        "experiments": experiments_table(context),
        "compute": compute_table(args.benchmarks),
        **analysis_tables(args.analysis),
        "ood": ood,
        "wise": wise,
    }
    for name, frame in tables.items():
        write_csv(frame, out / f"{name}.csv")
        print(f"{name}.csv: {len(frame)} rows", flush=True)
    # Byte for byte, so that the copies keep their source lines.
    for name, path in authors.items():
        with atomic_path(out / f"{name}.csv") as tmp:
            shutil.copyfile(path, tmp)
