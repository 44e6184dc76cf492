"""What studies/vtab1k.yaml's fast numerics change in accuracy: bf16 autocast, torch.compile and fused AdamW
against the authors' plain fp32 (studies/vtab1k-fp32.yaml), in one command on a GPU:

    python benchmarks/precision_effect.py [--tasks dtd eurosat clevr_count] [--methods lora adaptformer]

For each (task, method): Snakemake makes the study's selected final (and the tuning behind it, where it has not
run yet); then the same grid point, seed and data are trained again with the authors' numerics by `peftstudy
final` (into results/<study>/precision_effect/, kept: a rerun trains only what is missing). Printed per final:
both test top-1s, fp32 minus bf16, and the lowest and highest of the authors' own reruns of that final
(report/data/authors_reruns.csv, VTAB-1K's default_vtab): a difference inside that spread is no more than
rerunning changes. Not yet run (the session that wrote it had no GPU): a final of ViT-B/16 is 100 epochs of 1,000
images, minutes in fp32 on an H100. `--dry-run` prints the commands instead (a CPU machine, no data needed).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from peftstudy.io import read_json  # noqa: E402
from peftstudy.plan.cost import load_config  # noqa: E402
from peftstudy.plan.jobs import Plan  # noqa: E402
from peftstudy.report.tables import AUTHORS_VTAB, read_authors, rerun_ranges  # noqa: E402
from peftstudy.select import chosen_gp  # noqa: E402

EXPERIMENT = "vtab"
TASKS = ("dtd", "eurosat", "clevr_count")  # one per VTAB group, small test sets
METHODS = ("lora", "adaptformer")
REPORT_COLUMNS = ["dataset", "method", "gp", "seed", "bf16", "fp32", "fp32_minus_bf16", "authors_low", "authors_high"]


def fp32_file(plan: Plan, dataset: str, method: str, gp: str, seed: str, name: str) -> str:
    """Where the fp32 retraining of a selected final goes: beside the study's results, outside its layout."""
    return f"{plan.layout.root}/precision_effect/{dataset}/{method}/{gp}/seed{seed}/{name}"


def fp32_command(fast: Plan, exact: Plan, dataset: str, method: str, gp: str, seed: str, threads: int) -> list[str]:
    """`peftstudy run` of a selected final with the authors' numerics (the exact plan's spec), on the fast study's
    data, its outputs beside the study's results."""
    data = fast.train.final_spec(EXPERIMENT, dataset, method, gp, seed)
    outs = {
        role: fp32_file(fast, dataset, method, gp, seed, name)
        for role, name in (("metrics", "metrics.json"), ("logits", "logits.npz"), ("peft", "peft.safetensors"))
    }
    spec = dataclasses.replace(
        exact.train.final_spec(EXPERIMENT, dataset, method, gp, seed),
        train=data.train,
        test=data.test,
        manifest=data.manifest,
        **outs,
    )
    return ["peftstudy", "run", spec.to_json(), "--threads", str(threads)]


def compare(rows: Sequence[dict], reruns: pd.DataFrame) -> pd.DataFrame:
    """Each final's bf16 and fp32 test top-1, their difference, and the range of the authors' reruns of that
    (dataset, method) final (NaN where they have none). Pure."""
    frame = pd.DataFrame(list(rows), columns=["dataset", "method", "gp", "seed", "bf16", "fp32"])
    frame["fp32_minus_bf16"] = frame["fp32"] - frame["bf16"]
    ranges = rerun_ranges(reruns[reruns["experiment"] == AUTHORS_VTAB])[
        ["dataset", "method", "authors_low", "authors_high"]
    ]
    return frame.merge(ranges, on=["dataset", "method"], how="left")[REPORT_COLUMNS]


def render(frame: pd.DataFrame) -> str:
    """The comparison as text, with the one-line verdict: the largest difference against the widest rerun spread."""
    spread = (frame["authors_high"] - frame["authors_low"]).max()
    largest = frame["fp32_minus_bf16"].abs().max()
    text = frame.to_string(index=False, float_format=lambda v: f"{v:.2f}")
    verdict = (
        f"largest |fp32 - bf16|: {largest:.2f} points; the authors' reruns of these finals spread up to "
        f"{spread:.2f} points"
        if pd.notna(spread)
        else f"largest |fp32 - bf16|: {largest:.2f} points; the authors reran none of these finals"
    )
    return f"{text}\n{verdict}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--configfile", default="studies/vtab1k.yaml", help="the fast study")
    parser.add_argument("--overlay", default="studies/vtab1k-fp32.yaml", help="the authors' numerics over it")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--snakemake-args", default="--cores all", help="for the fast study's finals")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    fast = Plan.of(load_config([args.configfile]))
    exact = Plan.of(load_config([args.configfile, args.overlay]))
    layout = fast.layout
    targets = [layout.final_record(EXPERIMENT, task, method) for task in args.tasks for method in args.methods]
    make = ["snakemake", "--configfile", args.configfile, *shlex.split(args.snakemake_args), "--", *targets]
    print(shlex.join(make), flush=True)
    if not args.dry_run:
        subprocess.run(make, check=True)
    selected = layout.selected(EXPERIMENT)
    rows = []
    for task in args.tasks:
        for method in args.methods:
            gp = chosen_gp(selected, task, method) if Path(selected).exists() else None
            if gp is None:
                print(f"{task}/{method}: no selected point yet (or every point diverged): skipped", flush=True)
                continue
            for seed in map(str, fast.experiments[EXPERIMENT]["seeds"]):
                fp32 = fp32_file(fast, task, method, gp, seed, "metrics.json")
                if not Path(fp32).exists():
                    command = fp32_command(fast, exact, task, method, gp, seed, args.threads)
                    print(shlex.join(command), flush=True)
                    if args.dry_run:
                        continue
                    subprocess.run(command, check=True)
                bf16 = layout.final_file(EXPERIMENT, task, method, gp, seed, "metrics.json")
                runs = [read_json(path, schema="metrics") for path in (bf16, fp32)]
                if [run["precision"] for run in runs] != ["bf16", "fp32"]:
                    print(f"{task}/{method} seed {seed}: ran in {runs[0]['precision']} and {runs[1]['precision']}")
                scores = [run["metrics"]["test_top1"] for run in runs]
                rows.append(dict(dataset=task, method=method, gp=gp, seed=seed, bf16=scores[0], fp32=scores[1]))
    if rows:
        print(render(compare(rows, read_authors(REPO / "report/data/authors_reruns.csv"))))


if __name__ == "__main__":
    main()
