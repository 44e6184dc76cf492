"""The facts this project takes from the authors' result files, transcribed into report/data/authors_*.csv.

The authors' repository is not part of a clone: the report and the tests read these compact tables instead, each
naming its source (repository, commit, paths) in its `#` header lines. This module regenerates them from a
checkout of that repository and says, for each file, whether it is unchanged, changed or new:

    python -m peftstudy.report.authors [CHECKOUT] [--data report/data] [--check]

CHECKOUT defaults to ../shared/reference/petl_vision beside the repository root (where the project's machines
keep the authors' files). The exit status is 0 when every file is unchanged, 1 when one changed or is new (with
--check nothing is written), 2 for a bad argument. Facts only: numbers and grid points, never their code or prose.

- authors_vtab1k_tune.csv: every VTAB-1K grid point (`param_set`) of every method, in the authors' row order (the
  same on all 19 tasks), with its val_top1 on each task: what `select` is tested against.
- authors_vtab1k_selection.csv: their chosen point per task and method (`best_tune`), in our grid keys too, and
  its val_top1: the report's comparison of our choices with theirs.
- authors_reruns.csv: every final's test top-1 runs (a rerun appends one): the report's rerun ranges.
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import json
import re
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import yaml

from peftstudy import methods
from peftstudy.data.manyshot import COMMIT
from peftstudy.io import atomic_path
from peftstudy.report.tables import AUTHORS_VTAB, VTAB_TASKS

REPOSITORY = "github.com/OSU-MLB/PETL_Vision"
SOURCE = f"# source: {REPOSITORY} at commit {COMMIT}: the result files of Mai et al., CVPR 2025, arXiv 2409.16434"
REGENERATE = "# regenerate: python -m peftstudy.report.authors <checkout of that commit>, from the repository root"
VTAB = Path("tune_output") / AUTHORS_VTAB / "processed_vtab"
# The authors' experiment folders (tune_output/<experiment>) -> our dataset name and its training set, where the
# data folder does not give them: many-shot subsets are named by their training set, Clevr's by "clevr".
MANYSHOT = {
    "cifar100_1k_aug_normalized": ("cifar100", None),
    "cifar100_tune_lrwd": ("cifar100", None),
    "resisc_tune_lrwd": ("resisc45", None),
    "clevr_tune_lr": ("clevr_dist", "full"),
    "clip_fs_imagenet": ("imagenet", ""),
}
RUN_WORDS = {2: "twice", 3: "three times"}


def default_checkout(repo: Path) -> Path:
    return repo.parent / "shared" / "reference" / "petl_vision"


def method_order(repo: Path) -> list[str]:
    """The methods as the VTAB-1K study lists them: the order of the report's rows."""
    return yaml.safe_load((repo / "studies" / "vtab1k.yaml").read_text())["experiments"]["vtab"]["methods"]


def read_table(path: Path, columns: Sequence[str]) -> list[list[str]]:
    """One of the authors' CSV files as text rows of `columns`, found by their header names (a repeated header,
    which a rerun appends, is skipped)."""
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    header = rows[0]
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(missing)} in its header {','.join(header)}")
    at = [header.index(c) for c in columns]
    return [[row[i] for i in at] for row in rows[1:] if row != header]


def vtab_tune(checkout: Path, order: Sequence[str]) -> tuple[list[list[str]], dict[tuple[str, str], dict[str, str]]]:
    """Rows of authors_vtab1k_tune.csv, and each (task, method)'s val_top1 by its point (JSON, keys sorted): the
    tasks and methods the checkout has, in the study's order (a method of one task must be in all)."""
    tasks = [t for t in VTAB_TASKS if (checkout / VTAB / t).is_dir()]
    found = {m.name for m in (checkout / VTAB / tasks[0]).iterdir() if m.is_dir()} if tasks else set()
    if found - set(order):
        raise ValueError(
            f"{checkout / VTAB / tasks[0]}: {', '.join(sorted(found - set(order)))} is no method of the study"
        )
    rows, val = [], {}
    for method in [m for m in order if m in found]:
        points = None
        for task in tasks:
            path = checkout / VTAB / task / method / "tune_summary.csv"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; the checkout has task {task} but not its {method} runs")
            table = read_table(path, ("param_set", "val_top1"))
            these = [json.dumps(ast.literal_eval(p), sort_keys=True) for p, _ in table]  # a Python dict literal
            if points is not None and these != points:
                raise ValueError(f"{path}: its grid points differ from those of {tasks[0]} (or their order)")
            points = these
            val[task, method] = {p: v for p, (_, v) in zip(these, table, strict=True)}
        rows += [[method, p, *(val[t, method][p] for t in tasks)] for p in points or []]
    return [["method", "authors_hp", *tasks], *rows], val


def vtab_selection(checkout: Path, order: Sequence[str], val: dict[tuple[str, str], dict[str, str]]) -> list[list]:
    """Rows of authors_vtab1k_selection.csv: `best_tune` of each final_result.json and the val_top1 of that point."""
    rows: list[list] = [["task", "method", "authors_hp", "hp", "val_top1"]]
    for task in VTAB_TASKS:
        for method in order:
            if (task, method) not in val:
                continue
            path = checkout / VTAB / task / method / "final_result.json"
            best = json.loads(path.read_text()).get("best_tune")
            chosen = json.dumps(best, sort_keys=True)
            if chosen not in val[task, method]:
                raise ValueError(f"{path}: best_tune {chosen} is none of the points of its tune_summary.csv")
            hp = json.dumps(methods.from_authors(method, best), sort_keys=True)
            rows.append([task, method, chosen, hp, val[task, method][chosen]])
    return rows


def rerun_key(path: Path, tune_output: Path) -> tuple:
    experiment, prefix, data_name, folder, _ = path.relative_to(tune_output).parts
    match = re.fullmatch(r"(.+)_(\d+)", folder)
    method, dim = (match[1], int(match[2])) if match else (folder, None)
    return experiment, prefix, data_name, method, -1 if dim is None else dim


def reruns(checkout: Path) -> tuple[list[list], list[str]]:
    """Rows of authors_reruns.csv (every final_summary.csv, its runs' test_top1 in file order) and a header line
    that counts the reruns per experiment."""
    tune_output = checkout / "tune_output"
    rows: list[list] = [["experiment", "dataset", "train", "method", "dim", "test_top1"]]
    runs: dict[str, list[list[float]]] = {}
    for path in sorted(tune_output.glob("*/*/*/*/final_summary.csv"), key=lambda p: rerun_key(p, tune_output)):
        experiment, _, data_name, method, dim = rerun_key(path, tune_output)
        if experiment == AUTHORS_VTAB:
            dataset, train = data_name, ""
        elif experiment in MANYSHOT:
            dataset, fixed = MANYSHOT[experiment]
            train = data_name if fixed is None else fixed
        else:
            raise ValueError(f"{path}: experiment {experiment!r} is none of {', '.join(MANYSHOT)} or default_vtab")
        tests = [v for (v,) in read_table(path, ("test_top1",))]
        runs.setdefault(experiment, []).append([float(v) for v in tests])
        rows.append([experiment, dataset, train, method, "" if dim < 0 else dim, " ".join(tests)])
    return rows, [rerun_counts(runs)]


def rerun_counts(runs: dict[str, list[list[float]]]) -> str:
    """`# finals: 503 files; reruns: <experiment>: of 320 finals 245 ran twice, 21 ran three times (...)`."""
    parts = []
    for experiment, finals in runs.items():
        several = [r for r in finals if len(r) > 1]
        if not several:
            continue
        times = Counter(len(r) for r in several)
        counted = ", ".join(f"{times[n]} ran {RUN_WORDS.get(n, f'{n} times')}" for n in sorted(times))
        spread = [max(r) - min(r) for r in several]
        parts.append(
            f"{experiment}: of {len(finals)} finals {counted} (test top-1 max-min median "
            f"{statistics.median(spread):.2f} points, {sum(s > 1 for s in spread)} over 1)"
        )
    total = sum(map(len, runs.values()))
    return f"# finals: {total} files; reruns: " + "; ".join([*parts, "no other experiment reran a final"])


HEADERS = {
    "authors_vtab1k_tune.csv": [
        "# path: tune_output/default_vtab/processed_vtab/<task>/<method>/tune_summary.csv: each grid point (param_set,",
        "#   here as JSON in their key names) in their row order, the same on every task, and its val_top1 per task",
        "#   (last-epoch val200 top-1, %, as they recorded it)",
    ],
    "authors_vtab1k_selection.csv": [
        "# path: tune_output/default_vtab/processed_vtab/<task>/<method>/: final_result.json best_tune (their chosen",
        "#   grid point) and tune_summary.csv val_top1 of that point (last-epoch val200 top-1, %, as they recorded it)",
        "# authors_hp = best_tune in their key names; hp = the same point in our grid keys and values",
        "#   (methods.from_authors)",
    ],
    "authors_reruns.csv": [
        "# path: tune_output/<experiment>/<data prefix>/<data name>/<method>[_<dim>]/final_summary.csv, all of them;",
        "#   test_top1 = the test top-1 of each run appended to that file (a rerun of the same final appends one), in",
        "#   file order; the last is final_result.json's avg_acc",
        "# dataset, train: the data name, or as in authors_manyshot.csv (clevr = clevr_dist full); method, dim: the",
        "#   folder (rand_h_adapter_8 = rand_h_adapter, 8)",
    ],
}


def render(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    body = io.StringIO()
    csv.writer(body, lineterminator="\n").writerows(rows)
    return "\n".join([SOURCE, *header, REGENERATE, ""]) + body.getvalue()


def transcribe(checkout: Path, repo: Path) -> dict[str, str]:
    """Each authors_*.csv this module owns -> its full text, from the checkout."""
    if not (checkout / VTAB).is_dir():
        raise FileNotFoundError(
            f"{checkout}: no {VTAB} in it; pass a checkout of {REPOSITORY} at commit {COMMIT[:7]} "
            "(git clone, then git checkout that commit)"
        )
    order = method_order(repo)
    tune, val = vtab_tune(checkout, order)
    rerun_rows, counts = reruns(checkout)
    return {
        "authors_vtab1k_tune.csv": render(HEADERS["authors_vtab1k_tune.csv"], tune),
        "authors_vtab1k_selection.csv": render(
            HEADERS["authors_vtab1k_selection.csv"], vtab_selection(checkout, order, val)
        ),
        "authors_reruns.csv": render([*HEADERS["authors_reruns.csv"], *counts], rerun_rows),
    }


def update(texts: dict[str, str], data: Path, write: bool) -> dict[str, str]:
    """Compare each text with the file in `data` (writing it where it differs, if `write`): name -> state."""
    states = {}
    for name, text in texts.items():
        path = data / name
        states[name] = "new" if not path.exists() else "unchanged" if path.read_text() == text else "changed"
        if write and states[name] != "unchanged":
            with atomic_path(path) as tmp:
                tmp.write_text(text)
    return states


def main(argv: Sequence[str] | None = None, repo: Path | None = None) -> int:
    repo = repo or Path.cwd()
    parser = argparse.ArgumentParser(prog="python -m peftstudy.report.authors", description=__doc__.splitlines()[0])
    parser.add_argument(
        "checkout",
        nargs="?",
        type=Path,
        default=default_checkout(repo),
        help=f"a checkout of {REPOSITORY} at {COMMIT[:7]} (default: {default_checkout(repo)})",
    )
    parser.add_argument("--data", type=Path, default=repo / "report" / "data", help="where the tables are")
    parser.add_argument("--check", action="store_true", help="compare only: write nothing")
    args = parser.parse_args(argv)
    if not (repo / "studies" / "vtab1k.yaml").is_file():
        parser.error(f"{repo}: no studies/vtab1k.yaml; run this from the repository root")
    try:
        texts = transcribe(args.checkout, repo)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    states = update(texts, args.data, write=not args.check)
    for name, state in states.items():
        print(f"{args.data / name}: {state}")
    return int(any(state != "unchanged" for state in states.values()))


if __name__ == "__main__":
    sys.exit(main())
