"""Selection: the tune results of one experiment -> each (dataset, method)'s chosen grid point (val only).

One selection per experiment, not per method or dataset: a checkpoint's completion makes Snakemake re-evaluate
the whole DAG, so their number is what a paper-sized run pays for (docs/scale.md). Each (dataset, method)'s entry
of selected.json changes only when its own choice does, and its finals and record read that entry alone.
The rule is the authors' (docs/protocol.md §C.3): the highest last-epoch val top-1 (`val_top1`) wins, or for their
CLIP runs the best val evaluation (`val_best_top1`); ties go to the last tied point in grid order
(`tie_break="last"`), or to the first. Diverged runs never win. When every grid point diverged, the entry
says so (`status: all-diverged`, naming each run and why): nothing is chosen, no final is scheduled, and the
tables and the report show that (experiment, dataset, method) as all-diverged.

Before choosing, select checks that the tune results cover the grid exactly: each tune job's file holds its own
grid points, every one of them and nothing else. A point missing (a file of an older grid, an entry deleted) or
extra (a file of an older grid) would move the choice silently; select refuses instead, naming each file, the
points it lacks and those it holds beyond its job, and how to remake it.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftstudy.io import atomic_path, read_json, write_json
from peftstudy.plan import study
from peftstudy.plan.specs import Options
from peftstudy.plan.stage_specs import SelectSpec

SUMMARY_COLUMNS = (
    "experiment",
    "dataset",  # what the run trained and scored on: the selection's dataset or one of its tuning folds
    "tuned_for",  # the dataset whose selection the run is part of
    "method",
    "gp",
    "hp",
    "status",
    "val_top1",
    "val_best_top1",
    "val_loss",
    "train_loss",
    "trainable_params",
    "wall_seconds",
    "selected",  # the grid point chosen for `tuned_for` (its rows on each tuning fold too)
    "selection_metric",  # what the choice was made on (empty where every point diverged)
)


# What each selection metric is, in the words of selected.json's rule and of the report.
METRIC_WORDS = {"val_top1": "last-epoch val top-1", "val_best_top1": "best-evaluation val top-1"}


ALL_DIVERGED = "all-diverged"


class AllDiverged(ValueError):
    """No grid point has a finite score to choose by."""


class IncompleteTune(ValueError):
    """Tune results that do not cover their grid exactly, or a tune file that cannot be read."""


def remake(paths: Sequence[str]) -> str:
    """How to remake tune jobs' files: Snakemake reruns the job of a deleted output."""
    named = " ".join(paths)
    it = "it" if len(paths) == 1 else "them"
    return f"remake {it}: rm {named}, then run snakemake again (or add --forcerun {named})"


def chosen(selected: str | Path, dataset: str, method: str) -> dict[str, Any]:
    """A (dataset, method)'s entry of a selected.json: its grid point, or `status: all-diverged`."""
    stat = os.stat(selected)
    return _choices(str(selected), stat.st_mtime_ns, stat.st_size)[dataset][method]


@functools.cache
def _choices(selected: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """Read once per version of the file: Snakemake re-runs the input functions of every job after a checkpoint
    behind each completed selection, and those of the tables and the target ask for every choice (paper: 698 of
    them each time)."""
    return read_json(selected, schema="selected")["datasets"]


def chosen_gp(selected: str | Path, dataset: str, method: str) -> str | None:
    """The grid point a selected.json chose for `method` on `dataset`, or None when every one diverged (no finals)."""
    record = chosen(selected, dataset, method)
    return None if record.get("status") == ALL_DIVERGED else record["gp"]


def choose(
    results: Sequence[dict[str, Any]], order: Sequence[str], tie_break: str = "last", metric: str = "val_top1"
) -> dict[str, Any]:
    """The winning result among tune `results`, given the grid order of their `gp` ids; AllDiverged when no
    grid point can win. Pure."""
    if tie_break not in ("last", "first"):
        raise ValueError(f"tie_break {tie_break!r}: use last or first")
    if metric not in METRIC_WORDS:
        raise ValueError(f"selection metric {metric!r}: use {' or '.join(METRIC_WORDS)}")
    unevaluated = [r["gp"] for r in results if r["status"] == "ok" and metric not in r["metrics"]]
    if unevaluated:
        raise ValueError(
            f"selection.metric {metric} but grid points {unevaluated[:3]} have no such score: "
            "val_best_top1 needs recipe.eval_every > 0"
        )
    position = {gp: i for i, gp in enumerate(order)}
    missing = [r["gp"] for r in results if r["gp"] not in position]
    if missing:
        raise ValueError(f"tune results for grid points not in the grid: {missing}")
    ok = [r for r in results if r["status"] == "ok" and r["metrics"].get(metric) is not None]
    if not ok:
        raise AllDiverged(
            f"every one of the {len(results)} grid points diverged or has no val score; widen the grid (e.g. lower lr)"
        )
    ranked = sorted(ok, key=lambda r: position[r["gp"]])
    if tie_break == "last":
        ranked.reverse()
    return max(ranked, key=lambda r: r["metrics"][metric])  # max keeps the first of equals in `ranked`


def average_folds(results: Sequence[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One result per grid point: its score averaged over the tuning folds it ran on (the authors' 5-fold
    CIFAR-100 500 and RESISC45 225/450, docs/protocol.md §C.1), diverged if any fold diverged. Pure."""
    by_gp: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_gp.setdefault(r["gp"], []).append(r)
    if len({len(rs) for rs in by_gp.values()}) > 1:
        raise ValueError(
            "grid points ran on different numbers of folds: " + str({g: len(rs) for g, rs in by_gp.items()})
        )
    averaged = []
    for rs in by_gp.values():
        ok = all(r["status"] == "ok" and r["metrics"].get(metric) is not None for r in rs)
        score = sum(r["metrics"][metric] for r in rs) / len(rs) if ok else None
        averaged.append(dict(rs[0], status="ok" if ok else "diverged", metrics={**rs[0]["metrics"], metric: score}))
    return averaged


def choice(results: Sequence[dict[str, Any]], order: Sequence[str], tie_break: str, metric: str) -> dict[str, Any]:
    """One method's entry of selected.json from its tune results (on every tuning fold): the winner, with the rule
    in words, or `status: all-diverged` naming each run and why. Pure."""
    folds = sorted({r["dataset"] for r in results})
    rule = (
        f"max {METRIC_WORDS[metric]}"
        + (f" averaged over {len(folds)} tuning folds ({', '.join(folds)})" if len(folds) > 1 else "")
        + f"; ties to the {tie_break} grid point in grid order; diverged runs excluded"
    )
    try:
        best = choose(average_folds(results, metric), order, tie_break, metric)
    except AllDiverged:
        # Recorded, not raised: the other runs' tables and report still get built, and show this one as such.
        return {"status": ALL_DIVERGED, "rule": rule, "runs": diverged_runs(results)}
    return {"gp": best["gp"], "hp": best["hp"], "metric": metric, "score": best["metrics"][metric], "rule": rule}


def read_tune(path: str) -> list[dict[str, Any]]:
    """A tune job's results; IncompleteTune naming the file (and how to remake it) where it cannot be read."""
    try:
        return read_json(path, schema="tune")["points"]
    except ValueError as err:  # not JSON (truncated), or not a tune job's results (edited)
        raise IncompleteTune(f"{path} is not a readable tune result ({err}); {remake([path])}") from None


def tune_results(
    paths: Sequence[str],
    grids: dict[str, dict[str, dict[str, Any]]],
    tuning_sets: dict[str, list[str]],
    runs_per_job: int,
) -> list[dict[str, Any]]:
    """Every tune result of a selection, in the order of `paths`, each tune job's file (in the plan's order,
    study.selection_jobs) checked to hold exactly its job's grid points (`grids`: each method's {gp: hp} in grid
    order): IncompleteTune names every file that lacks one of them or holds another (not in its job, of other
    settings, or repeated)."""
    packs = {method: study.packs(list(grid), runs_per_job) for method, grid in grids.items()}
    jobs = study.selection_jobs(tuning_sets, packs)
    if len(paths) != len(jobs):
        raise ValueError(
            f"{len(paths)} tune files for the {len(jobs)} tune jobs of the spec's grids, datasets and runs_per_job: "
            "give every tune job's file, in the plan's order"
        )
    results: list[dict[str, Any]] = []
    problems: dict[str, list[str]] = {}  # file -> what it lacks and holds beyond its job
    for path, (tuning_set, method, _, points) in zip(paths, jobs, strict=True):
        found: dict[str, dict[str, Any]] = {}
        extra = []
        for r in read_tune(path):
            ours = r["dataset"] == tuning_set and r["method"] == method and r["gp"] in points
            if ours and r["gp"] not in found and study.canonical(r["hp"]) == study.canonical(grids[method][r["gp"]]):
                found[r["gp"]] = r
            else:
                extra.append(r)
        missing = [_point(gp, grids[method][gp]) for gp in points if gp not in found]
        lines = [f"  missing {len(missing)}: {'; '.join(missing)}"] if missing else []
        if extra:
            lines.append(f"  extra {len(extra)}: " + "; ".join(_extra(r, tuning_set, method) for r in extra))
        if lines:
            problems[path] = [f"{path} ({method} on {tuning_set}, {len(points)} grid points):", *lines]
        results.extend(found[gp] for gp in points if gp in found)
    if problems:
        raise IncompleteTune(
            f"the tune results do not cover the grid exactly ({len(problems)} of {len(paths)} files); nothing was "
            "selected:\n" + "\n".join(line for lines in problems.values() for line in lines) + "\nEach file "
            "predates its tune job's current grid points (the grid edited under --rerun-triggers mtime, which reruns "
            "no job whose params alone changed) or was edited; " + remake(list(problems))
        )
    return results


def _point(gp: str, hp: dict[str, Any]) -> str:
    return f"{gp} {json.dumps(hp, sort_keys=True)}"


def _extra(result: dict[str, Any], tuning_set: str, method: str) -> str:
    """A result a tune file holds beyond its job's points, and why it is not one of them."""
    where = (result["dataset"], result["method"])
    why = "" if where == (tuning_set, method) else f" (of {where[1]} on {where[0]})"
    return _point(result["gp"], result["hp"]) + why


def run(spec: SelectSpec, options: Options) -> None:
    grids = {method: {p.gp: dict(p.hp) for p in points} for method, points in spec.grids.items()}
    datasets = {dataset: list(tuning_sets) for dataset, tuning_sets in spec.datasets.items()}
    results = tune_results(spec.metrics, grids, datasets, spec.runs_per_job)
    if any(r["phase"] != "tune" for r in results):
        raise ValueError("select reads tune results only")
    tuned_for = {tuning_set: d for d, tuning_sets in datasets.items() for tuning_set in tuning_sets}
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {(d, m): [] for d in datasets for m in grids}
    for r in results:
        grouped[tuned_for[r["dataset"]], r["method"]].append(r)
    choices: dict[str, dict[str, Any]] = {d: {} for d in datasets}
    for (dataset, method), rs in grouped.items():
        record = choices[dataset][method] = choice(rs, list(grids[method]), spec.tie_break, spec.metric)
        if record.get("status") == ALL_DIVERGED:
            print(f"{dataset}/{method}: every grid point diverged or has no val score: recorded", flush=True)
        else:
            print(f"{dataset}/{method}: selected {record['gp']} {record['hp']} ({record['score']:.2f})", flush=True)
    write_json(spec.selected, {"datasets": choices}, schema="selected")
    order = {d: i for i, d in enumerate(datasets)}
    position = {(m, gp): (i, j) for i, (m, grid) in enumerate(grids.items()) for j, gp in enumerate(grid)}
    with atomic_path(spec.summary) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SUMMARY_COLUMNS)
        ranked = sorted(results, key=lambda r: (order[tuned_for[r["dataset"]]], position[r["method"], r["gp"]]))
        for r in ranked:
            m = r["metrics"]
            entry = choices[tuned_for[r["dataset"]]][r["method"]]
            writer.writerow(
                [
                    r["experiment"],
                    r["dataset"],
                    tuned_for[r["dataset"]],
                    r["method"],
                    r["gp"],
                    json.dumps(r["hp"], sort_keys=True),
                    r["status"],
                    m.get("val_top1"),
                    m.get("val_best_top1"),
                    m.get("val_loss"),
                    m.get("train_loss"),
                    r["trainable_params"],
                    r["wall_seconds"],
                    r["gp"] == entry.get("gp"),  # no gp: every point diverged
                    entry.get("metric", ""),
                ]
            )


def diverged_runs(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each tune run of an all-diverged grid, named (experiment/dataset/method, grid point) with its reason. Pure."""
    return [
        {
            "run": f"{r['experiment']}/{r['dataset']}/{r['method']}",
            "gp": r["gp"],
            "hp": r["hp"],
            "status": r["status"],
            "reason": _reason(r),
        }
        for r in results
    ]


def _reason(result: dict[str, Any]) -> str:
    if result["status"] == "ok":
        return "no val score"
    return (result.get("divergence") or {}).get("reason") or "diverged"  # metrics.json from before the record
