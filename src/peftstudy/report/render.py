"""The page: figures from the papermill-executed notebook, tables from the tidy CSVs, one Jinja template.

Figures are embedded as base64 PNG, so index.html is one self-contained file that opens offline. Any table may be
missing or empty (a study still running): its section then says so instead of failing.
"""

from __future__ import annotations

import base64
import math
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from peftstudy.io import atomic_path
from peftstudy.plan import stage_specs
from peftstudy.plan.specs import Options
from peftstudy.plan.stage_specs import ReportSpec
from peftstudy.report.tables import RERUN_COLUMNS, rerun_ranges
from peftstudy.select import METRIC_WORDS

NOT_COMPUTED = "not computed yet"
# Which quirk of the authors' code each recipe value reproduces (docs/protocol.md §I), for the captions.
QUIRKS = {
    ("lr_step", "authors"): "the scheduler stepped one epoch late (docs/protocol.md §I.20)",
    ("normalize", False): "unnormalised [0, 1] pixels (docs/protocol.md §I.13)",
    ("peft_init", "authors"): "timm's init overwriting every Linear a method adds (docs/protocol.md §I.26)",
}
CAPTIONS = {
    "accuracy_vs_params": "Mean test top-1 over the experiment's datasets against the number of trainable parameters "
    "outside the head (the paper's Fig. 1a); the linear probe (0 parameters) is drawn at 1.",
    "spread": "Test top-1 of every method per dataset: a box over the methods, one dot per method; a narrow box means "
    "the methods reach similar accuracy (the paper's claim 1).",
    "agreement": "Fraction of test images on which two methods predict the same class, mean over datasets and seeds.",
    "disagreement": "Left: Jaccard overlap of the test images two methods get wrong; right: overlap of their K most "
    "confident predictions (the paper's Fig. 1b asks the same of the 5,000 most confident); mean over datasets and "
    "seeds. Low overlap with similar accuracy = different mistakes, room for ensembles.",
    "ensembles": "Averaging the softmax probabilities of all methods' finals (seed by seed, then averaged) against the "
    "best single method; the oracle marks how often some member is right.",
    "manyshot": "Test top-1 against the number of training images (train+val of the final run) of datasets that are "
    "one dataset at several sizes (config key size_of), one line per method.",
    "robustness": "Finals trained on the in-distribution set (first group of bars) evaluated on shifted test sets, "
    "mean over seeds.",
    "wise": "WiSE: trained tensors the zero-shot model also has are interpolated (1 - alpha) zero-shot + alpha "
    "fine-tuned, added branches scaled by alpha; alpha = 0 is the zero-shot model (square), 1 the fine-tuned (star). "
    "Dashed: the head-only variant (the head interpolated, everything else fine-tuned; the authors' merge_fc). "
    "Right, for reference: the authors' curves (CLIP ViT-B/16, 100-shot ImageNet, docs/protocol.md §H.4).",
}
# Page sections: which figures each holds, in order.
SECTIONS = {
    "accuracy": ("accuracy_vs_params", "spread"),
    "disagreement": ("agreement", "disagreement", "ensembles"),
    "manyshot": ("manyshot",),
    "robustness": ("robustness", "wise"),
}


def load_tables(csvs: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    """Each named table (name -> CSV); a missing or empty file reads as no table."""
    frames = {}
    for name, path in sorted(csvs.items()):
        try:
            frames[name] = pd.read_csv(path, comment="#" if name.startswith("authors_") else None)
        except (FileNotFoundError, pd.errors.EmptyDataError):
            continue
    return frames


def table(frames: dict[str, pd.DataFrame], name: str, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """The named table, or an empty one when it is absent, empty or lacks a needed column."""
    frame = frames.get(name)
    if frame is None or frame.empty or not set(columns) <= set(frame.columns):
        return pd.DataFrame(columns=list(columns))
    return frame


def protocol(experiments: pd.DataFrame, experiment: str) -> str:
    """How an experiment's numbers were made: selection rule, seeds and which of the authors' quirks ran."""
    rows = experiments[experiments["experiment"] == experiment] if "experiment" in experiments else experiments[:0]
    if rows.empty:
        return ""
    row = rows.iloc[0]
    last = row.get("tie_break") == "last"
    tie = "the last point in grid order, the authors’ rule" if last else "the first point in grid order"
    seeds = str(row.get("seeds", "")).split()
    text = (
        f"Experiment {experiment}: each method at the grid point with the highest "
        f"{METRIC_WORDS[row['selection_metric']]} (ties to {tie}), retrained on train+val and tested once after its "
        f"last epoch; {plural(len(seeds), 'seed')}."
    )
    quirks = [text for (key, value), text in QUIRKS.items() if key in row and _same(row[key], value)]
    if quirks:
        text += " Authors' quirks reproduced: " + "; ".join(quirks) + "."
    return text


def plural(count: int, noun: str) -> str:
    """'1 dataset', '3 datasets'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _same(cell: Any, value: Any) -> bool:
    # CSV round trip: booleans come back as bools or strings, absent recipe keys as NaN.
    if isinstance(value, bool):
        return str(cell).lower() == str(value).lower()
    return cell == value


def caption(name: str, experiments: pd.DataFrame) -> str:
    """A figure's caption: what it shows and how it was computed (name = kind, or kind__experiment)."""
    kind, _, experiment = name.partition("__")
    if not experiment and kind in ("robustness", "wise") and "robustness" in experiments:
        flagged = experiments[experiments["robustness"].astype(str).str.lower() == "true"]
        experiment = flagged["experiment"].iloc[0] if len(flagged) else ""
    return " ".join(t for t in (CAPTIONS.get(kind, ""), protocol(experiments, experiment)) if t)


def execute_notebook(notebook: str, out_notebook: str, tables: str, figures: Path) -> None:
    import papermill

    with atomic_path(out_notebook) as tmp:
        papermill.execute_notebook(
            notebook,
            str(tmp),
            parameters={"tables_dir": str(Path(tables).resolve()), "figures_dir": str(figures)},
            kernel_name="python3",
            progress_bar=False,
            language="python",
        )


def _fmt(value: float, spec: str = ".1f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def beyond_noise(ours: float, theirs: float, low: float, high: float, tolerance: float) -> bool:
    """Whether a difference from the authors counts as real (is marked): more than `tolerance` points, and our
    number outside [low, high], the range of the authors' own reruns of that final (NaN where not known)."""
    if math.isnan(ours) or math.isnan(theirs):
        return False
    return abs(ours - theirs) > tolerance and not low <= ours <= high


def _cell(
    ours: float, std: float, theirs: float, tolerance: float, low: float = math.nan, high: float = math.nan
) -> dict[str, Any]:
    diff = ours - theirs
    return {
        "ours": _fmt(ours),
        "std": "" if math.isnan(std) or std == 0 else f"± {std:.1f}",
        "authors": "" if math.isnan(theirs) else _fmt(theirs),
        "reruns": f"{low:.1f}–{high:.1f}" if low < high else "",
        "diff": "" if math.isnan(diff) else f"{diff:+.1f}",
        "off": beyond_noise(ours, theirs, low, high, tolerance),
        "missing": math.isnan(ours),
    }


def _cells(by: pd.DataFrame, method: str, tolerance: float) -> dict[str, Any]:
    """One method's cell of a row of `by` (indexed by method): ours, the authors' and their reruns' range."""
    if method not in by.index:
        return _cell(math.nan, math.nan, math.nan, tolerance)
    row = by.loc[method]
    return _cell(
        row["test_top1"],
        row.get("test_top1_std", math.nan),
        row["authors_top1"],
        tolerance,
        row["authors_low"],
        row["authors_high"],
    )


def rerun_summary(frame: pd.DataFrame, tolerance: float) -> dict[str, Any]:
    """How many of the authors' numbers in an experiment's table come from finals they ran more than once, and
    how far apart those runs lie."""
    known = frame[frame["authors_top1"].notna() & frame["authors_runs"].notna()]
    spread = (known["authors_high"] - known["authors_low"])[known["authors_runs"] > 1]
    return {
        "numbers": len(known),
        "rerun": len(spread),
        "median": _fmt(spread.median(), ".2f") if len(spread) else "",
        "over": int((spread > tolerance).sum()),
    }


def _all_diverged(by_method: pd.DataFrame, method: str) -> dict[str, Any]:
    """A cell whose every grid point diverged says so, instead of the dash of a result still to come."""
    if by_method.get("status", pd.Series(dtype=str)).get(method) != "all-diverged":
        return {}
    return {"ours": "all diverged", "diverged": True, "missing": False}


def accuracy_tables(vtab: pd.DataFrame, means: pd.DataFrame, tolerance: float) -> list[dict[str, Any]]:
    """Per experiment: rows of tasks, grouped, each group followed by its mean; the two overall means; the
    trainable parameters. Columns are the methods in config order."""
    out = []
    for experiment, frame in vtab.groupby("experiment", sort=False):
        methods = list(dict.fromkeys(frame["method"]))
        rows = []
        m = means[means["experiment"] == experiment]
        for group, part in frame.groupby("group", sort=False):
            for dataset, cells in part.groupby("dataset", sort=False):
                by = cells.set_index("method")
                rows.append(
                    {
                        "label": dataset,
                        "kind": "task",
                        "cells": [_cells(by, x, tolerance) | _all_diverged(by, x) for x in methods],
                    }
                )
            rows.append(_mean_row(m, group, f"{group} ({part['dataset'].nunique()})", methods, tolerance))
        for label in ("mean over tasks", "mean over groups"):
            rows.append(_mean_row(m, label, label, methods, tolerance))
        params = frame.groupby("method", sort=False)["trainable_params"].max()
        rows.append(
            {
                "label": "trainable params (non-head)",
                "kind": "params",
                "cells": [
                    {"ours": _fmt(params.get(x, math.nan), ",.0f"), "std": "", "authors": "", "diff": ""}
                    for x in methods
                ],
            }
        )
        has_authors = frame["authors_top1"].notna().any()
        out.append(
            {
                "experiment": experiment,
                "methods": methods,
                "rows": rows,
                "authors": bool(has_authors),
                "reruns": rerun_summary(frame, tolerance),
            }
        )
    return out


def _mean_row(means: pd.DataFrame, group: str, label: str, methods: list[str], tolerance: float) -> dict[str, Any]:
    by = means[means["group"] == group].set_index("method")
    return {"label": label, "kind": "mean", "cells": [_cells(by, x, tolerance) for x in methods]}


def with_reruns(authors: pd.DataFrame, reruns: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The authors' numbers with a `reruns` column: the range of their own runs of that final, where they ran it
    more than once (rows of authors_reruns.csv matched on `keys`)."""
    if authors.empty or reruns.empty:
        return authors
    ranges = rerun_ranges(reruns)[[*keys, *RERUN_COLUMNS]]
    merged = authors.merge(ranges, on=keys, how="left", validate="one_to_one")
    return authors.assign(
        reruns=[
            f"{low:.2f}–{high:.2f} ({runs:.0f} runs)" if runs > 1 else ""
            for runs, low, high in merged[list(RERUN_COLUMNS)].itertuples(index=False)
        ]
    )


def selected_table(tune: pd.DataFrame) -> pd.DataFrame:
    """The selected grid points (one row per tuning fold), each with the metric it won on and its score."""
    chosen = tune[tune["selected"].astype(str) == "True"]
    return chosen[["experiment", "dataset", "method", "gp", "hp"]].assign(
        **{
            "selected on": [METRIC_WORDS[m] for m in chosen["selection_metric"]],
            "score": [row[row["selection_metric"]] for _, row in chosen.iterrows()],
        }
    )


# The authors' numerics: plain fp32, eager, torch's default AdamW. The overlay that reproduces them on a GPU, and
# the command that measures what the departure costs.
AUTHORS_NUMERICS = "studies/vtab1k-fp32.yaml"
PRECISION_EFFECT = "python benchmarks/precision_effect.py"


def numerics(final: pd.DataFrame) -> list[str]:
    """How the final runs departed from the authors' plain fp32 training, each departure with the number of runs
    that took it (metrics.json records precision, compile mode, device): none, where they computed as theirs."""
    runs = len(final)
    taken = {
        "bf16 autocast": final.get("precision", pd.Series(dtype=str)).astype(str).eq("bf16").sum(),
        "fused AdamW": final.get("fused_adamw", pd.Series(dtype=str)).astype(str).str.lower().eq("true").sum(),
        "torch.compile": final.get("compile", pd.Series(dtype=str)).fillna("off").astype(str).ne("off").sum(),
    }
    return [f"{what} in {int(count)} of {runs} final runs" for what, count in taken.items() if count]


def summary(frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    final = table(frames, "final", ("experiment", "dataset", "method", "seed", "status", "device", "code_version"))
    tune = table(frames, "tune", ("experiment", "dataset", "method", "gp", "status", "wall_seconds"))
    results = table(frames, "results", ("study", "config_hash"))
    experiments = table(frames, "experiments", ("experiment", "method", "datasets", "grid_points", "seeds"))
    datasets = table(frames, "datasets", ("dataset", "group", "trainval", "test"))
    compute = table(frames, "compute", ("phase", "seconds", "cpu_seconds"))
    vtab = table(frames, "vtab", ("experiment", "dataset", "method", "test_top1"))
    planned_tune = int((experiments["datasets"] * experiments["grid_points"]).sum()) if len(experiments) else 0
    diverged = vtab["status"] == "all-diverged" if "status" in vtab else pd.Series(False, index=vtab.index)
    missing = vtab[vtab["test_top1"].isna() & ~diverged]
    return {
        "study": results["study"].iloc[0] if len(results) else NOT_COMPUTED,
        "config_hash": results["config_hash"].iloc[0] if len(results) else NOT_COMPUTED,
        "code_versions": sorted(final["code_version"].astype(str).unique()),
        # Experiments whose results do not share their code, weights, data, device, precision or packages.
        "mixed": table(frames, "mixed", ("experiment", "field", "detail")).to_dict("records"),
        "experiments": [
            {
                "name": name,
                "methods": len(frame),
                "datasets": int(frame["datasets"].iloc[0]),
                "grid": f"{frame['grid_points'].min()}–{frame['grid_points'].max()}"
                if frame["grid_points"].nunique() > 1
                else str(frame["grid_points"].iloc[0]),
                "grid_total": int((frame["datasets"] * frame["grid_points"]).sum()),
                "seeds": str(frame["seeds"].iloc[0]),
            }
            for name, frame in experiments.groupby("experiment", sort=False)
        ],
        "datasets": [f"{r.dataset} ({r.group}; {r.trainval} train+val, {r.test} test)" for r in datasets.itertuples()],
        "methods": list(dict.fromkeys(experiments["method"])),
        "tuned": len(tune),
        "planned_tune": planned_tune,
        "diverged": [
            f"{r.experiment}/{r.dataset}/{r.method} {r.gp}" for r in tune[tune["status"] != "ok"].itertuples()
        ],
        "finals_failed": [
            f"{r.experiment}/{r.dataset}/{r.method} seed {r.seed}" for r in final[final["status"] != "ok"].itertuples()
        ],
        "finals": len(final),
        "missing": [f"{r.experiment}/{r.dataset}/{r.method}" for r in missing.itertuples()],
        "all_diverged": [f"{r.experiment}/{r.dataset}/{r.method}" for r in vtab[diverged].itertuples()],
        "numerics": numerics(final),
        "authors_numerics": AUTHORS_NUMERICS,
        "precision_effect": PRECISION_EFFECT,
        "devices": sorted(final["device"].astype(str).unique()),
        "hosts": sorted(final.get("host", pd.Series(dtype=str)).astype(str).unique()),
        "unpinned": sorted(
            {line for lines in final.get("unpinned", pd.Series(dtype=str)).dropna() for line in lines.splitlines()}
        ),
        "compute": [
            {
                "phase": phase,
                "jobs": len(f),
                "hours": f["seconds"].sum() / 3600,
                "cpu_hours": f["cpu_seconds"].sum() / 3600,
            }
            for phase, f in compute.groupby("phase", sort=False)
        ],
        "compute_hours": compute["seconds"].sum() / 3600 if len(compute) else None,
        "cost": gpu_cost(frames),
    }


# Jobs that belong to no experiment's estimate (compute table rows without an experiment), by phase: what they are.
OTHER_JOBS = {
    "robustness": "robustness evaluation (the finals on the shifted test sets, and WiSE)",
    "pretrain": "backbone pretraining",
}


def gpu_cost(frames: dict[str, pd.DataFrame]) -> dict[str, Any] | None:
    """GPU-hours spent per experiment (benchmark seconds x the GPUs each job asked for) beside the estimate made
    before the run (`peftstudy estimate`, per experiment); apart from them (`other`), the jobs no experiment's
    estimate covers (robustness evaluation, pretraining), by what they are. None when the tables carry no GPU
    counts (a context without the cost)."""
    compute = table(frames, "compute", ("phase", "experiment", "gpu_hours"))
    planned = table(frames, "experiments", ("experiment", "estimated_gpu_hours", "estimate_gpu"))
    if compute.empty and planned.empty:
        return None
    experiment = compute["experiment"].fillna("").astype(str)
    ours, others = compute[experiment != ""].assign(experiment=experiment), compute[experiment == ""]
    spent = ours.groupby("experiment", sort=False)["gpu_hours"]
    estimated = planned.groupby("experiment", sort=False)["estimated_gpu_hours"].sum()
    names = list(dict.fromkeys([*estimated.index, *spent.groups]))
    rows = [
        {
            "experiment": name,
            "jobs": int(spent.size().get(name, 0)),
            "spent": float(spent.sum().get(name, 0.0)),
            "estimated": float(estimated[name]) if name in estimated else None,
        }
        for name in names
    ]
    other = [
        {"what": OTHER_JOBS.get(phase, f"{phase} jobs"), "jobs": len(jobs), "spent": float(jobs["gpu_hours"].sum())}
        for phase, jobs in others.groupby("phase", sort=False)
    ]
    return {
        "gpu": str(planned["estimate_gpu"].iloc[0]) if len(planned) else "",
        "rows": rows,
        "other": other,
        "spent": float(compute["gpu_hours"].sum()),
        "estimated": float(estimated.sum()),
    }


def authors_agreement(frames: dict[str, pd.DataFrame]) -> dict[str, int] | None:
    """Of our choices on the authors' VTAB-1K tasks: how many are planned, made (compared) and their point;
    None when the tables predate the comparison."""
    if "selection_vs_authors" not in frames:
        return None
    agree = frames["selection_vs_authors"].get("agree", pd.Series(dtype=str)).astype(str).str.lower()
    return {
        "rows": len(agree),
        "compared": int(agree.isin(["true", "false"]).sum()),
        "agree": int((agree == "true").sum()),
    }


def png_width(png: bytes) -> int:
    """A PNG's width in pixels (its IHDR chunk): the page shows each figure at most that wide, so that a wide
    figure takes a row and narrow ones sit side by side, none scaled down past reading."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    return int.from_bytes(png[16:20], "big")


def figure(path: Path, experiments: pd.DataFrame) -> dict[str, Any]:
    """A figure for the page: its name, caption, base64 PNG and width in pixels."""
    png = path.read_bytes()
    return {
        "name": path.stem,
        "caption": caption(path.stem, experiments),
        "data": base64.b64encode(png).decode(),
        "width": png_width(png),
    }


def html(frame: pd.DataFrame, **kwargs: Any) -> str:
    return frame.to_html(classes="grid", border=0, index=False, float_format="%.1f", na_rep="–", **kwargs)


def run(spec: ReportSpec, options: Options) -> None:
    import jinja2

    frames = load_tables(spec.csvs)
    with tempfile.TemporaryDirectory() as tmp:
        figures_dir = Path(tmp)
        execute_notebook(spec.notebook, spec.executed, spec.tables, figures_dir)
        pngs = sorted(figures_dir.glob("*.png"))
        experiments = table(frames, "experiments", ("experiment",))
        figures = {
            section: [figure(p, experiments) for p in pngs if p.stem.partition("__")[0] in kinds]
            for section, kinds in SECTIONS.items()
        }
    vtab = table(
        frames, "vtab", ("experiment", "group", "dataset", "method", "test_top1", "authors_top1", *RERUN_COLUMNS)
    )
    means = table(
        frames,
        "group_means",
        ("experiment", "method", "group", "test_top1", "authors_top1", "authors_low", "authors_high"),
    )
    tune = table(frames, "tune", ("experiment", "dataset", "method", "gp", "hp", "selected", "selection_metric"))
    ensembles = table(frames, "ensembles", ("experiment", "dataset", "members", "size", "top1", "best_member_top1"))
    full = ensembles[ensembles["size"] == ensembles.groupby(["experiment", "dataset"])["size"].transform("max")]
    ood = table(frames, "ood", ("method", "set", "kind", "top1"))
    authors = {
        name: table(frames, f"authors_{name}", ("method",)) for name in ("vtab1k", "manyshot", "clip_ood", "wise")
    }
    reruns = table(frames, "authors_reruns", ("dataset", "train", "method", "dim", "test_top1"))
    authors["manyshot"] = with_reruns(authors["manyshot"], reruns, ["dataset", "train", "method", "dim"])
    html_tables = {
        "selected": html(selected_table(tune)) if len(tune) else "",
        # All methods: their number, not the long list of names that pushed the accuracies off the page.
        "ensembles": html(full.drop(columns="members").rename(columns={"size": "methods"})) if len(full) else "",
        "ood": html(
            ood.pivot_table(index="set", columns="method", values="top1", sort=False)
            .rename_axis(columns=None)
            .reset_index()
        )
        if len(ood)
        else "",
        **{f"authors_{k}": html(v) if len(v) else "" for k, v in authors.items()},
        "selection_vs_authors": html(frames["selection_vs_authors"])
        if len(frames.get("selection_vs_authors", ()))
        else "",
    }
    template_path = Path(spec.template)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_path.parent), autoescape=jinja2.select_autoescape(["html", "j2"])
    )
    env.filters["plural"] = plural
    page = env.get_template(template_path.name).render(
        summary=summary(frames),
        accuracy=accuracy_tables(vtab, means, spec.tolerance) if vtab["test_top1"].notna().any() else [],
        tolerance=spec.tolerance,
        tables=html_tables,
        authors_agreement=authors_agreement(frames),
        figures=figures,
        not_computed=NOT_COMPUTED,
        titled=[
            {"name": name, "title": title, "html": html(frames[name]) if len(frames.get(name, ())) else ""}
            for name, title in stage_specs.TABLES.items()
            if title
        ],
        csvs=sorted(Path(spec.copies[name]).name for name in spec.csvs if Path(spec.csvs[name]).is_file()),
    )
    with atomic_path(spec.html) as tmp:
        tmp.write_text(page)
    # The tables travel with the page, so a reader can take the numbers as CSV (those written so far).
    for name, path in spec.csvs.items():
        if Path(path).is_file():
            with atomic_path(spec.copies[name]) as tmp:
                shutil.copyfile(path, tmp)
