"""Tidy CSV tables from a study's result files: one row per observation, the report's only input."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from peftstudy.io import atomic_path, read_json
from peftstudy.plan import stage_specs
from peftstudy.plan.specs import Options
from peftstudy.plan.stage_specs import TablesSpec, final_runs
from peftstudy.plan.tasks import vtab_groups
from peftstudy.select import ALL_DIVERGED, SUMMARY_COLUMNS

COMPUTE_KEYS = ("phase", "experiment", "dataset", "method", "job")
# VTAB-1K's groups (docs/protocol.md §C.7), by the processed folder names.
VTAB_GROUPS = vtab_groups()
VTAB_TASKS = tuple(t for tasks in VTAB_GROUPS.values() for t in tasks)
MEAN_TASKS, MEAN_GROUPS = "mean over tasks", "mean over groups"


def group_of(dataset: str, context: dict[str, Any]) -> str:
    """The config's `group`, else the VTAB group, else the dataset is a group of its own."""
    spec = context["datasets"].get(dataset, {})
    vtab = next((g for g, tasks in VTAB_GROUPS.items() if dataset in tasks), None)
    return spec.get("group") or vtab or dataset


def tune_table(paths: list[str]) -> pd.DataFrame:
    """Every tune run (each experiment's tune.csv, as select wrote it), marked where selected, with the metric
    its (dataset, method) was selected on."""
    frames = [pd.read_csv(path) for path in paths]
    for path, frame in zip(paths, frames, strict=True):
        missing = [column for column in SUMMARY_COLUMNS if column not in frame]
        if missing:
            raise ValueError(
                f"{path} lacks {', '.join(missing)}: written by an older peftstudy; rerun its selection "
                "(snakemake --forcerun select)"
            )
    tune = pd.concat(frames, ignore_index=True)
    return tune.assign(selection_metric=tune["selection_metric"].fillna(""))  # "": every point diverged


def all_diverged(records: list[str]) -> list[tuple[str, str, str]]:
    """The (experiment, dataset, method) runs whose every grid point diverged (final.json says so)."""
    found = []
    for path in records:
        record = read_json(path, schema="final")
        if record.get("status") == ALL_DIVERGED:
            found.append((record["experiment"], record["dataset"], record["method"]))
    return found


def final_metrics_files(records: list[str], given: tuple[str, ...]) -> list[str]:
    """Each final run's metrics.json, as the spec names them (checked against the records, in their order)."""
    read = [read_json(record, schema="final") for record in records]
    return [path for _, _, path in final_runs(read, "metrics", given, TablesSpec.stage)]


def final_table(paths: list[str]) -> pd.DataFrame:
    rows = []
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
                # The other departures from the authors' numerics (recipe.compile, recipe.fused_adamw): the fused
                # kernel runs on CUDA only; a metrics.json from before fused_adamw was a switch ran it there.
                "compile": m["recipe"].get("compile", "off"),
                "fused_adamw": bool(m["recipe"].get("fused_adamw", True)) and m["device"].startswith("cuda"),
                "code_version": m["provenance"]["code_version"],
                "code_hash": m["provenance"]["code_hash"],
                "config_hash": m["provenance"]["config_hash"],
                # Downloads no pinned sha256 checked (allow_unpinned), one per line.
                "unpinned": "\n".join(m["provenance"].get("unpinned", [])),
            }
        )
    return pd.DataFrame(rows)


RUN_KEY = ["experiment", "dataset", "method"]

# The fields of a result's dependencies (plan.depends.Dependencies) that must agree across an experiment's results:
# one trained on other weights, data, code or precision makes its comparison with the others unsound. Settings
# differ by design (methods, grid points, seeds) and are not compared.
AGREED = ("backbone_weights", "zero_shot_head", "device", "precision", "torch", "timm")
MIXED_COLUMNS = ["experiment", "field", "detail"]


def _counted(values: Mapping[str, int]) -> str:
    """`267b2e… (10 results), bca4af… (4 results)`."""
    shown = {(f"{v[:6]}…" if len(v) > 12 else v): n for v, n in values.items()}
    return ", ".join(f"{v} ({n} result{'s' if n > 1 else ''})" for v, n in sorted(shown.items()))


def mixed_table(metrics: list[Mapping[str, Any]]) -> pd.DataFrame:
    """Per experiment, each dependency its results do not share: the backbone's weights or head, the device, the
    precision, torch or timm (one value each), the data (per dataset and split), and the code (per module, compared
    across every result that imports it). Results written before dependencies were recorded are a row of their own.
    """
    rows = []
    by_experiment: dict[str, list[Mapping[str, Any]]] = {}
    for m in metrics:
        by_experiment.setdefault(m["experiment"], []).append(m)
    for experiment, results in sorted(by_experiment.items()):
        recorded = [m for m in results if "dependencies" in m["provenance"]]
        if len(recorded) < len(results):
            rows.append(
                [experiment, "dependencies", f"not recorded by {len(results) - len(recorded)} of {len(results)} "
                 "results (written by an older peftstudy): rerun them"]
            )  # fmt: skip
        values: dict[tuple[str, str], dict[str, int]] = {}
        for m in recorded:
            found = m["provenance"]["dependencies"]
            seen = {(field, ""): found[field] for field in AGREED}
            seen |= {("data", f"{m['dataset']}/{role}"): digest for role, digest in found["data"].items()}
            seen |= {("code", module): digest for module, digest in m["provenance"].get("code_files", {}).items()}
            for where, value in seen.items():
                counts = values.setdefault(where, {})
                counts[str(value)] = counts.get(str(value), 0) + 1
        for field in (*AGREED, "data", "code"):
            split = {part: counts for (name, part), counts in values.items() if name == field and len(counts) > 1}
            if split:
                parts = sorted(split.items())
                detail = "; ".join(f"{part}: {_counted(c)}" if part else _counted(c) for part, c in parts)
                rows.append([experiment, field.replace("_", " "), detail])
    return pd.DataFrame(rows, columns=MIXED_COLUMNS)


def final_metrics(paths: list[str]) -> list[dict[str, Any]]:
    """The metrics.json of every final run."""
    return [read_json(path) for path in paths]


def tune_metrics(paths: list[str]) -> list[dict[str, Any]]:
    """The metrics of every grid point the tune jobs' files hold."""
    return [point for path in paths for point in read_json(path, schema="tune")["points"]]


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
                    "selection_metric": exp["selection_metric"],
                    "robustness": name == context.get("robustness_experiment"),
                    **exp["recipe"],
                }
            )
    return pd.DataFrame(rows)


def compute_table(benchmarks: list[Mapping[str, str]]) -> pd.DataFrame:
    """Snakemake's benchmark of every training job: wall and CPU seconds, peak memory. Each job as the plan names
    it (peftstudy.plan.layout.benchmark: phase, experiment, dataset, method, job and the file's path)."""
    rows = []
    for job in benchmarks:
        bench = pd.read_csv(job["path"], sep="\t", na_values=["-", "NA"])
        # Several rows only when a rule repeats its benchmark: all of them were spent.
        rows.append(
            {
                **{key: job[key] for key in COMPUTE_KEYS},
                "seconds": float(bench["s"].sum()),
                "cpu_seconds": float(bench["cpu_time"].sum()),
                "max_rss_mb": float(bench["max_rss"].max()),
            }
        )
    return pd.DataFrame(rows, columns=[*COMPUTE_KEYS, "seconds", "cpu_seconds", "max_rss_mb"])


def with_gpu_hours(compute: pd.DataFrame, cost: Mapping[str, Any] | None) -> pd.DataFrame:
    """The compute table with each job's GPUs (as the plan's resources ask for them: `cost` is
    peftstudy.plan.cost.report_context) and the GPU-hours it spent: wall seconds x GPUs. Unchanged without `cost`
    (a context made before the cost was part of it)."""
    if cost is None:
        return compute

    def gpus(phase: str, experiment: str) -> int:
        return cost["gpus"][experiment][phase] if experiment else cost["phase_gpus"][phase]

    asked = [gpus(p, e) for p, e in zip(compute["phase"], compute["experiment"], strict=True)]
    return compute.assign(gpus=pd.Series(asked, index=compute.index, dtype=int)).assign(
        gpu_hours=lambda f: f["seconds"] * f["gpus"] / 3600
    )


def with_estimate(experiments: pd.DataFrame, cost: Mapping[str, Any] | None) -> pd.DataFrame:
    """The experiments table with the GPU-hours `peftstudy estimate` expects of each (experiment, method), on the
    GPU named in `estimate_gpu`. Unchanged without `cost`."""
    if cost is None or experiments.empty:
        return experiments
    hours = cost["estimated_gpu_hours"]
    return experiments.assign(
        estimated_gpu_hours=[
            hours[e].get(m, 0.0) for e, m in zip(experiments["experiment"], experiments["method"], strict=True)
        ],
        estimate_gpu=cost["gpu"],
    )


# The authors' experiment (tune_output/<name>) behind authors_vtab1k.csv, and what is known of its reruns.
AUTHORS_VTAB = "default_vtab"
RERUN_COLUMNS = ("authors_runs", "authors_low", "authors_high")


def read_authors(path: str | Path) -> pd.DataFrame:
    """An authors_*.csv: its `#` lines name the source, the rest is the table."""
    return pd.read_csv(path, comment="#")


def authors_top1(authors: pd.DataFrame | None, dataset: str, method: str) -> float:
    if authors is None or dataset not in authors.columns or method not in set(authors["method"]):
        return math.nan
    return float(authors.loc[authors["method"] == method, dataset].iloc[0])


def rerun_ranges(reruns: pd.DataFrame) -> pd.DataFrame:
    """authors_reruns.csv with each final's runs (space-separated test top-1) as their number, lowest and highest."""
    runs = reruns["test_top1"].astype(str).str.split().map(lambda values: [float(v) for v in values])
    return reruns.drop(columns="test_top1").assign(
        authors_runs=runs.map(len), authors_low=runs.map(min), authors_high=runs.map(max)
    )


def vtab_table(
    results: pd.DataFrame, context: dict[str, Any], authors: pd.DataFrame | None, reruns: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Every planned (experiment, dataset, method), ours (NaN while missing) beside the authors' (NaN where they
    have none: a non-VTAB dataset or method), the range of their reruns of that final, and the difference."""
    ours = results.set_index(["experiment", "dataset", "method"]) if len(results) else None
    ranges = (
        rerun_ranges(reruns[reruns["experiment"] == AUTHORS_VTAB]).set_index(["dataset", "method"])
        if reruns is not None
        else pd.DataFrame(columns=list(RERUN_COLUMNS))
    )
    rows = []
    for name, exp in context["experiments"].items():
        for dataset in exp["datasets"]:
            for method in exp["grid_points"]:
                key = (name, dataset, method)
                have = ours is not None and key in ours.index
                row = ours.loc[key] if have else None
                mine = float(row["test_top1"]) if have else math.nan
                theirs = authors_top1(authors, dataset, method)
                spread = ranges.loc[(dataset, method)] if (dataset, method) in ranges.index else None
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
                        **{
                            column: math.nan if math.isnan(theirs) or spread is None else float(spread[column])
                            for column in RERUN_COLUMNS
                        },
                        "diff": mine - theirs,
                    }
                )
    columns = ["experiment", "group", "dataset", "method", "test_top1", "test_top1_std", "seeds"]
    return pd.DataFrame(rows, columns=[*columns, "trainable_params", "authors_top1", *RERUN_COLUMNS, "diff", "status"])


SELECTION_COLUMNS = [
    *("experiment", "dataset", "task", "method", "gp", "hp", "val_top1"),
    *("authors_hp", "authors_val_top1", "agree"),
]


def selection_table(tune: pd.DataFrame, context: dict[str, Any], authors: pd.DataFrame | None) -> pd.DataFrame:
    """Per planned (experiment, dataset, method) on a real VTAB-1K task the authors tuned: our chosen grid point
    and its val top-1 (blank while not selected) beside theirs (authors_vtab1k_selection.csv, their point in our
    key names), and whether it is their point (`agree`: every key they tuned has their value; blank while ours is
    missing). Empty when no dataset is one of their tasks (synthetic, many-shot and ImageNet data have none)."""
    tasks = context.get("vtab_tasks", {})
    theirs = authors.set_index(["task", "method"]) if authors is not None else None
    chosen = tune[tune["selected"].astype(str) == "True"]
    ours = chosen.drop_duplicates(["experiment", "dataset", "method"]).set_index(["experiment", "dataset", "method"])
    rows = []
    for name, exp in context["experiments"].items():
        for dataset in exp["datasets"]:
            for method in exp["grid_points"]:
                task = tasks.get(dataset)
                if theirs is None or (task, method) not in theirs.index:
                    continue
                their = theirs.loc[(task, method)]
                have = (name, dataset, method) in ours.index
                mine = ours.loc[(name, dataset, method)] if have else None
                agree = None
                if have:
                    our_hp, their_hp = json.loads(mine["hp"]), json.loads(their["hp"])
                    agree = all(our_hp.get(key) == value for key, value in their_hp.items())
                rows.append(
                    {
                        "experiment": name,
                        "dataset": dataset,
                        "task": task,
                        "method": method,
                        "gp": mine["gp"] if have else "",
                        "hp": mine["hp"] if have else "",
                        "val_top1": float(mine["val_top1"]) if have else math.nan,
                        "authors_hp": their["hp"],
                        "authors_val_top1": float(their["val_top1"]),
                        "agree": agree,
                    }
                )
    return pd.DataFrame(rows, columns=SELECTION_COLUMNS)


def _mean(values: pd.Series) -> float:
    """The mean only when every value is there: a mean over the tasks done so far is no group mean."""
    return float(values.mean()) if len(values) and values.notna().all() else math.nan


def group_means(vtab: pd.DataFrame) -> pd.DataFrame:
    """Per (experiment, method): each group's mean, the mean over tasks and the mean over the group means,
    ours and the authors' over the same tasks (docs/protocol.md §C.7: which overall mean the paper uses is unknown),
    with
    the range the authors' mean spans over their reruns (the mean of the lowest runs to that of the highest)."""
    values = ("test_top1", "authors_top1", "authors_low", "authors_high")
    rows = []
    for (experiment, method), frame in vtab.groupby(["experiment", "method"], sort=False):
        groups = {group: frame[frame["group"] == group] for group in dict.fromkeys(frame["group"])}
        per_group = {group: ({v: _mean(part[v]) for v in values}, len(part)) for group, part in groups.items()}
        over_groups = {v: _mean(pd.Series([m[v] for m, _ in per_group.values()])) for v in values}
        over_tasks = {v: _mean(frame[v]) for v in values}
        means = {**per_group, MEAN_TASKS: (over_tasks, len(frame)), MEAN_GROUPS: (over_groups, len(frame))}
        for group, (m, n) in means.items():
            row = {"experiment": experiment, "method": method, "group": group, "tasks": n}
            rows.append({**row, **m, "diff": m["test_top1"] - m["authors_top1"]})
    return pd.DataFrame(rows, columns=["experiment", "method", "group", "tasks", *values, "diff"])


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


def analysis_tables(outputs: list[Mapping[str, str]]) -> dict[str, pd.DataFrame]:
    """The analysis JSONs as tidy tables (ANALYSIS_COLUMNS); method sets are joined with '+', as Venn regions.
    Each output as the plan names it (plan.stages.analysis.AnalysisJobs.analysis_outputs: experiment, dataset,
    kind and path)."""
    rows: dict[str, list[dict]] = {name: [] for name in ANALYSIS_COLUMNS}
    for output in (o for o in outputs if o["kind"] in ("ensembles", "agreement")):  # the ensemble job's files
        key = {"experiment": output["experiment"], "dataset": output["dataset"]}
        data = read_json(output["path"], schema=output["kind"])
        if output["kind"] == "ensembles":
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


def robustness_tables(outputs: list[Mapping[str, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ID/OOD accuracy and WiSE curves; a method whose every grid point diverged has neither (results says so).
    Each file as the plan names it ({method, kind, path}: kind ood or wise, the robustness spec's output role)."""
    ood, wise = [], []
    for output in outputs:
        path = output["path"]
        if output["kind"] == "ood":
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


class Sources:
    """What the table builders read, each loaded once (several tables share one: the tune summaries, the finals,
    the analysis files)."""

    def __init__(self, spec: TablesSpec) -> None:
        self.spec = spec
        self.context = dict(spec.context)
        self.authors_files = {Path(p).stem: p for p in spec.authors}

    def authors(self, name: str) -> pd.DataFrame | None:
        """authors_<name>.csv, None when the spec lacks it."""
        path = self.authors_files.get(f"authors_{name}")
        return read_authors(path) if path else None

    @cached_property
    def final_metrics(self) -> list[str]:
        return final_metrics_files(list(self.spec.finals), self.spec.final_metrics)

    @cached_property
    def finals(self) -> pd.DataFrame:
        return final_table(self.final_metrics)

    @cached_property
    def results(self) -> pd.DataFrame:
        diverged = all_diverged(list(self.spec.finals))
        return results_table(self.finals, diverged).assign(study=self.spec.study, config_hash=self.spec.config_hash)

    @cached_property
    def vtab(self) -> pd.DataFrame:
        return vtab_table(self.results, self.context, self.authors("vtab1k"), self.authors("reruns"))

    @cached_property
    def tune(self) -> pd.DataFrame:
        return tune_table(list(self.spec.tune))

    @cached_property
    def analysis(self) -> dict[str, pd.DataFrame]:
        return analysis_tables(list(self.spec.analysis))

    @cached_property
    def robustness(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return robustness_tables(list(self.spec.robustness))


# Each table's builder, by its name in stage_specs.TABLES (the one list of the tables' names): registered with @builds.
BUILDERS: dict[str, Callable[[Sources], pd.DataFrame]] = {}


def builds(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a builder of the named tables (names of stage_specs.TABLES); given several names it returns a table per
    name, in order."""

    def register(builder: Callable[..., Any]) -> Callable[..., Any]:
        unknown = [name for name in names if name not in stage_specs.TABLES]
        if unknown:
            raise ValueError(f"tables {unknown} are not in peftstudy.plan.stage_specs.TABLES: add them there")
        for i, name in enumerate(names):
            BUILDERS[name] = builder if len(names) == 1 else (lambda s, i=i: builder(s)[i])
        return builder

    return register


@builds("tune")
def _tune(s: Sources) -> pd.DataFrame:
    return s.tune


@builds("selection_vs_authors")
def _selection_vs_authors(s: Sources) -> pd.DataFrame:
    return selection_table(s.tune, s.context, s.authors("vtab1k_selection"))


@builds("final")
def _final(s: Sources) -> pd.DataFrame:
    return s.finals


@builds("results")
def _results(s: Sources) -> pd.DataFrame:
    return s.results


@builds("vtab")
def _vtab(s: Sources) -> pd.DataFrame:
    return s.vtab


@builds("group_means")
def _group_means(s: Sources) -> pd.DataFrame:
    return group_means(s.vtab)


@builds("datasets")
def _datasets(s: Sources) -> pd.DataFrame:
    return datasets_table(s.context, list(s.spec.manifests))


@builds("experiments")
def _experiments(s: Sources) -> pd.DataFrame:
    return with_estimate(experiments_table(s.context), s.context.get("cost"))


@builds("compute")
def _compute(s: Sources) -> pd.DataFrame:
    return with_gpu_hours(compute_table(list(s.spec.benchmarks)), s.context.get("cost"))


@builds(*ANALYSIS_COLUMNS)
def _analysis(s: Sources) -> list[pd.DataFrame]:
    return [s.analysis[name] for name in ANALYSIS_COLUMNS]


@builds("ood", "wise")
def _robustness(s: Sources) -> tuple[pd.DataFrame, pd.DataFrame]:
    return s.robustness


@builds("mixed")
def _mixed(s: Sources) -> pd.DataFrame:
    return mixed_table([*tune_metrics(list(s.spec.tune_metrics)), *final_metrics(s.final_metrics)])


def run(spec: TablesSpec, options: Options) -> None:
    missing = [name for name in stage_specs.TABLES if name not in BUILDERS]
    if missing:
        raise ValueError(f"tables {missing} of peftstudy.plan.stage_specs.TABLES have no builder (@builds) here")
    sources = Sources(spec)
    for name in stage_specs.TABLES:
        frame = BUILDERS[name](sources)
        write_csv(frame, Path(spec.tables[name]))
        print(f"{name}.csv: {len(frame)} rows", flush=True)
    # Byte for byte, so that the copies keep their source lines.
    for name, path in sources.authors_files.items():
        with atomic_path(spec.tables[name]) as tmp:
            shutil.copyfile(path, tmp)
