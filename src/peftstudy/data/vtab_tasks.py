"""VTAB-1K's tasks as google-research/task_adaptation defines them: pure recipes and label functions.

- a *recipe* turns a builder's split sizes into the TFDS slices of train800, val200 and test, as each of
  task_adaptation's data classes defines them (train800val200 is always train800 followed by val200);
- a *label function* turns one TFDS example (numpy values) into the task's class, as task_adaptation's
  preprocessing functions do.

The task table itself (builders, classes, recipes and label functions by name, groups) is package data of the
planning package (:mod:`peftstudy.plan.tasks`), read by the config check, this stage and the report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from peftstudy.plan.tasks import task_table

Example = Mapping[str, Any]


@dataclass(frozen=True)
class Slice:
    """Examples [start, stop) of one TFDS split, in the builder's (unshuffled) order."""

    split: str
    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.stop:
            raise ValueError(f"{self.split}[{self.start}:{self.stop}]: not a slice of a split")

    def __len__(self) -> int:
        return self.stop - self.start

    def __str__(self) -> str:
        """TFDS's split syntax, for ``as_dataset(split=...)``."""
        return f"{self.split}[{self.start}:{self.stop}]"


@dataclass(frozen=True)
class Splits:
    """What a recipe gives: the three slices written as pools; train800val200 is train800 then val200."""

    train800: Slice
    val200: Slice
    test: Slice

    def tfds(self) -> dict[str, str]:
        """Each list's TFDS split string (recorded in the manifest)."""
        return {
            "train800": str(self.train800),
            "val200": str(self.val200),
            "train800val200": f"{self.train800}+{self.val200}",
            "test": str(self.test),
        }


def _slice(sizes: Mapping[str, int], split: str, start: int, stop: int) -> Slice:
    """A slice the split can fill: TFDS would silently give fewer examples than the recipe asks for."""
    if split not in sizes:
        raise ValueError(f"the builder has no {split!r} split (it has {', '.join(sizes)})")
    if stop > sizes[split]:
        raise ValueError(f"{split}[{start}:{stop}]: the {split!r} split has only {sizes[split]} examples")
    return Slice(split, start, stop)


def tfds_percent(percent: int, num_examples: int) -> int:
    """The example index at ``percent``% of a split, rounded as TFDS's default ('closest') percent slicing."""
    return round(percent * num_examples / 100.0)


# Recipes: TFDS split sizes -> Splits. Each follows one of task_adaptation's data classes; VTAB-1K's
# train800 is always the first 800 examples of its "train" split and val200 the first 200 of its "val".


def held_out_percent(sizes: Mapping[str, int], percent: int, test: str = "test") -> Splits:
    """Tasks with only train and test in TFDS (the "90% rule"; 80% for Pets): VTAB's train is the first
    `percent`% of TFDS train, its val the rest, its test a separate split (CLEVR's is TFDS validation)."""
    cut = percent * sizes["train"] // 100
    return Splits(
        _slice(sizes, "train", 0, 800), _slice(sizes, "train", cut, cut + 200), _slice(sizes, test, 0, sizes[test])
    )


def train_validation(sizes: Mapping[str, int]) -> Splits:
    """Tasks whose TFDS train, validation and test are VTAB's train, val and test."""
    return Splits(
        _slice(sizes, "train", 0, 800), _slice(sizes, "validation", 0, 200), _slice(sizes, "test", 0, sizes["test"])
    )


def three_way(sizes: Mapping[str, int], train_percent: int, val_percent: int) -> Splits:
    """Tasks with only a TFDS train split, cut into train, val and test (the rest): EuroSAT and RESISC45
    60/20/20, dSprites 80/10/10."""
    n = sizes["train"]
    cut, val = train_percent * n // 100, val_percent * n // 100
    return Splits(
        _slice(sizes, "train", 0, 800), _slice(sizes, "train", cut, cut + 200), _slice(sizes, "train", cut + val, n)
    )


def halved_test(sizes: Mapping[str, int]) -> Splits:
    """smallNORB: VTAB's val is TFDS test[:50%], its test test[50%:]; train is TFDS train."""
    n = sizes["test"]
    return Splits(
        _slice(sizes, "train", 0, 800), _slice(sizes, "test", 0, 200), _slice(sizes, "test", tfds_percent(50, n), n)
    )


def clevr_many_shot(sizes: Mapping[str, int]) -> Splits:
    """Clevr-distance many-shot (docs/protocol.md §D.2), in the layout's names: tune on train[:90%] (train800.txt)
    against train[90%:] (val200.txt), train the final run on all of TFDS train (train800val200.txt), test on
    TFDS validation. Unlike the study's code, the tuning val is not also in the tuning train
    (docs/protocol.md §I.17)."""
    cut = 90 * sizes["train"] // 100
    return Splits(
        _slice(sizes, "train", 0, cut),
        _slice(sizes, "train", cut, sizes["train"]),
        _slice(sizes, "validation", 0, sizes["validation"]),
    )


RECIPES: dict[str, Callable[[Mapping[str, int]], Splits]] = {
    "train90": partial(held_out_percent, percent=90),
    "train80": partial(held_out_percent, percent=80),
    "train90_test_validation": partial(held_out_percent, percent=90, test="validation"),
    "train_validation": train_validation,
    "train60_20_20": partial(three_way, train_percent=60, val_percent=20),
    "train80_10_10": partial(three_way, train_percent=80, val_percent=10),
    "halved_test": halved_test,
    "clevr_dist_manyshot": clevr_many_shot,
}


# Label functions: one TFDS example, as tfds.as_numpy gives it -> the task's class.


def plain_label(example: Example) -> int:
    return int(example["label"])


def bin_below(value: float, thresholds: np.ndarray) -> int:
    """The index of the last threshold strictly below `value` (task_adaptation's
    ``reduce_max(where(thrs - value < 0))``): a value on a threshold belongs to the bin below it."""
    below = int(np.count_nonzero(thresholds < value))
    if below == 0:
        raise ValueError(f"{value} is not above the first threshold {thresholds[0]}: no bin")
    return below - 1


CLEVR_DISTANCE_THRESHOLDS = np.array([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])
KITTI_DISTANCE_THRESHOLDS = np.array([-100.0, 8.0, 20.0, 999.0])
KITTI_NO_VEHICLE = 1000.0  # the depth task_adaptation gives an image without vehicles: above 999, so class 3
KITTI_VEHICLES = 3  # object types 0, 1, 2 are Car, Van, Truck


def clevr_count(example: Example) -> int:
    """Number of objects - 3 (CLEVR scenes hold 3 to 10)."""
    return len(example["objects"]["size"]) - 3


def clevr_closest_distance(example: Example) -> int:
    """Bin of the closest object's depth (pixel_coords' third column)."""
    return bin_below(float(np.min(example["objects"]["pixel_coords"][:, 2])), CLEVR_DISTANCE_THRESHOLDS)


def kitti_closest_vehicle(example: Example) -> int:
    """Bin of the closest vehicle's depth (location's z, metres): 0 up to 8 m, 1 up to 20, 2 beyond, 3 none."""
    objects = example["objects"]
    depths = np.asarray(objects["location"])[np.asarray(objects["type"]) < KITTI_VEHICLES, 2]
    return bin_below(float(np.min(depths, initial=KITTI_NO_VEHICLE)), KITTI_DISTANCE_THRESHOLDS)


def _group(value: int, values: int, classes: int) -> int:
    """Nearby integer values grouped into `classes` classes, in float32 as task_adaptation's dSprites."""
    return int(np.floor(np.float32(value) / np.float32(values / classes)))


def dsprites_x_position(example: Example) -> int:
    """label_x_position (32 values) grouped into 16 classes."""
    return _group(int(example["label_x_position"]), 32, 16)


def dsprites_orientation(example: Example) -> int:
    """label_orientation (40 values) grouped into 16 classes."""
    return _group(int(example["label_orientation"]), 40, 16)


def smallnorb_azimuth(example: Example) -> int:
    return int(example["label_azimuth"])


def smallnorb_elevation(example: Example) -> int:
    return int(example["label_elevation"])


@dataclass(frozen=True)
class Task:
    """One VTAB task: its TFDS builder (``name[/config]:version``), classes, recipe and label."""

    builder: str
    classes: int
    recipe: str
    label: Callable[[Example], int]
    image_key: str = "image"
    image_scale: int = 1  # dSprites stores 0/1 pixels, which task_adaptation multiplies by 255


LABELS: dict[str, Callable[[Example], int]] = {
    f.__name__: f
    for f in (
        plain_label,
        clevr_count,
        clevr_closest_distance,
        kitti_closest_vehicle,
        dsprites_x_position,
        dsprites_orientation,
        smallnorb_azimuth,
        smallnorb_elevation,
    )
}
# The task table (peftstudy/plan/vtab_tasks.csv) with each label function's name resolved.
TASKS: dict[str, Task] = {
    name: Task(row.builder, row.classes, row.recipe, LABELS[row.label], row.image_key, row.image_scale)
    for name, row in task_table().items()
}
VTAB_TASKS: dict[str, Task] = {name: TASKS[name] for name, row in task_table().items() if row.group}
