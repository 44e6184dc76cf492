"""The page: figures from the papermill-executed notebook, tables from the tidy CSVs, one Jinja template.

Figures are embedded as base64 PNG, so index.html is one self-contained file that opens offline.
"""

from __future__ import annotations

import argparse
import base64
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from peftstudy.io import atomic_path

CAPTIONS = {
    "accuracy_vs_params": "Mean test top-1 over the experiment's datasets against the number of trainable parameters "
    "outside the head (the paper's Fig. 1a). Each method at its grid point selected on val (highest last-epoch val "
    "top-1, ties to the last grid point), retrained on train+val, tested once; mean over seeds.",
    "per_task": "Test top-1 per dataset and method, mean ± std over the final seeds.",
    "agreement": "Fraction of test images on which two methods predict the same class, mean over datasets and seeds.",
    "ensembles": "Averaging the softmax probabilities of all methods' finals (seed by seed, then averaged) against the "
    "best single method; the oracle marks how often some member is right.",
    "robustness": "Finals trained on the in-distribution set (first group) evaluated on test sets rendered with other "
    "styles, mean over seeds.",
    "wise": "WiSE: trained tensors the zero-shot model also has are interpolated (1 - alpha) zero-shot + alpha "
    "fine-tuned, added branches scaled by alpha; alpha = 0 is the zero-shot model (square), 1 the fine-tuned (star).",
}


def caption(name: str) -> str:
    for prefix, text in CAPTIONS.items():
        if name.startswith(prefix):
            return text
    return ""


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


def results_matrix(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per experiment: datasets x methods of 'mean ± std', with the mean over datasets as the last row."""
    out = {}
    for experiment, frame in results.groupby("experiment"):
        mean = frame.pivot(index="dataset", columns="method", values="test_top1")
        std = frame.pivot(index="dataset", columns="method", values="test_top1_std").fillna(0.0)
        cells = mean.map(lambda v: f"{v:.1f}") + std.map(lambda v: f" ± {v:.1f}")
        cells.loc["mean"] = mean.mean().map(lambda v: f"{v:.1f}")
        params = frame.groupby("method")["trainable_params"].first()
        cells.loc["trainable params"] = params.map(lambda v: f"{int(v):,}")
        out[experiment] = cells
    return out


def run(args: argparse.Namespace) -> None:
    import jinja2

    tables = Path(args.tables)
    frames = {p.stem: pd.read_csv(p) for p in sorted(tables.glob("*.csv"))}
    with tempfile.TemporaryDirectory() as tmp:
        figures_dir = Path(tmp)
        execute_notebook(args.notebook, args.out_notebook, args.tables, figures_dir)
        figures = [
            {"name": png.stem, "caption": caption(png.stem), "data": base64.b64encode(png.read_bytes()).decode()}
            for png in sorted(figures_dir.glob("*.png"))
        ]
    final, tune = frames["final"], frames["tune"]
    summary = {
        "study": frames["results"]["study"].iloc[0] if len(frames["results"]) else "?",
        "config_hash": frames["results"]["config_hash"].iloc[0] if len(frames["results"]) else "?",
        "code_versions": sorted(final["code_version"].astype(str).unique()),
        "code_hashes": sorted(final["code_hash"].astype(str).unique()),
        "experiments": sorted(final["experiment"].unique()),
        "datasets": sorted(final["dataset"].unique()),
        "methods": sorted(final["method"].unique()),
        "grid_points": len(tune),
        "diverged": int((tune["status"] != "ok").sum()),
        "finals": len(final),
        "seeds": sorted(final["seed"].unique().tolist()),
        "devices": sorted(final["device"].unique()),
        "compute_minutes": (tune["wall_seconds"].sum() + final["wall_seconds"].sum()) / 60.0,
    }
    html_tables = {
        "results": {k: v.to_html(classes="grid", border=0) for k, v in results_matrix(frames["results"]).items()},
        "selected": tune[tune["selected"]][["experiment", "dataset", "method", "gp", "hp", "val_top1"]].to_html(
            classes="grid", border=0, index=False, float_format="%.1f"
        ),
        "ensembles": frames["ensembles"].to_html(classes="grid", border=0, index=False, float_format="%.1f"),
        "ood": frames["ood"].to_html(classes="grid", border=0, index=False, float_format="%.1f"),
    }
    template_path = Path(args.template)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_path.parent), autoescape=jinja2.select_autoescape(["html", "j2"])
    )
    page = env.get_template(template_path.name).render(summary=summary, tables=html_tables, figures=figures)
    with atomic_path(args.out) as tmp:
        tmp.write_text(page)
    # The tables travel with the page, so a reader can take the numbers as CSV.
    csv_dir = Path(args.out).parent / "tables"
    csv_dir.mkdir(exist_ok=True)
    for p in tables.glob("*.csv"):
        shutil.copyfile(p, csv_dir / p.name)
