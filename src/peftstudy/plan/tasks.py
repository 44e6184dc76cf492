"""The study's dataset facts that are data, each written once: VTAB-1K's tasks and the many-shot subsets.

`vtab_tasks.csv` (package data of :mod:`peftstudy.tables`) holds one row per VTAB-1K task, keyed by the processed
archive's folder names: its group (docs/protocol.md §C.7), classes, TFDS builder (``name[/config]:version``), split
recipe
and label function (by name; :mod:`peftstudy.data.vtab_tasks` holds the functions) and image key and scale
(dSprites stores 0/1 pixels, which task_adaptation multiplies by 255). The builders are those task_adaptation asks
for, except KITTI: its kitti:3.1.0 is no longer served, VPT and the archive used 3.2.0 (task_adaptation issue 18).
Rows without a group are not VTAB-1K tasks (the many-shot Clevr-distance). The config check, the data stage and
the report read this table.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache

from peftstudy.tables import open_table


@dataclass(frozen=True)
class TaskRow:
    name: str
    group: str
    classes: int
    builder: str
    recipe: str
    label: str
    image_key: str
    image_scale: int


@cache
def task_table() -> dict[str, TaskRow]:
    """Every row of vtab_tasks.csv, by task name, in the table's (the paper's) order."""
    with open_table("vtab_tasks.csv") as handle:
        rows = list(csv.DictReader(handle))
    return {
        row["name"]: TaskRow(**{**row, "classes": int(row["classes"]), "image_scale": int(row["image_scale"])})
        for row in rows
    }


def vtab_groups() -> dict[str, tuple[str, ...]]:
    """VTAB-1K's groups (Natural, Specialized, Structured), each with its tasks in the table's order."""
    groups: dict[str, tuple[str, ...]] = {}
    for row in task_table().values():
        if row.group:
            groups[row.group] = (*groups.get(row.group, ()), row.name)
    return groups


# The many-shot subsets of the authors' PETL_Vision lists (docs/protocol.md §B.3).
MANYSHOT_SUBSETS = {
    "cifar100": ("500", "1k", "5k", "10k", "full"),
    "resisc45": ("225", "450", "900", "2250", "4500", "9000", "full"),
}
# The small subsets are tuned on five train/val folds (docs/protocol.md §B.3); the others have one split.
MANYSHOT_FOLDED = {("cifar100", "500"), ("resisc45", "225"), ("resisc45", "450")}
MANYSHOT_FOLDS = 5
MANYSHOT_CLASSES = {"cifar100": 100, "resisc45": 45}


def check_subset(dataset: str, subset: str, fold: int) -> None:
    if dataset not in MANYSHOT_SUBSETS:
        raise ValueError(f"dataset {dataset!r}: the many-shot datasets are {', '.join(MANYSHOT_SUBSETS)}")
    if subset not in MANYSHOT_SUBSETS[dataset]:
        raise ValueError(
            f"{dataset} subset {subset!r}: the authors' subsets are {', '.join(MANYSHOT_SUBSETS[dataset])}"
        )
    folds = MANYSHOT_FOLDS if (dataset, subset) in MANYSHOT_FOLDED else 1
    if not 0 <= fold < folds:
        raise ValueError(f"{dataset} subset {subset}: fold {fold}, but it has folds 0..{folds - 1}")
