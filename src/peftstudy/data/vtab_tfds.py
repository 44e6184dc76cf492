"""VTAB-1K built from TensorFlow Datasets, split and labelled as google-research/task_adaptation does.

This redoes what OSU-MLB/MLB-VTAB's ``get_vtab1k.py`` did to make the processed archive (docs/protocol.md §D.1): each
task's recipe and label function (:mod:`peftstudy.data.vtab_tasks`) applied to the builder's examples, the
images re-encoded as JPEG with PIL's defaults, one file per example, in the processed layout.

Only `open_builder` imports TensorFlow Datasets; `build` takes any object with a builder's ``info`` and
``as_dataset``, so the whole path is tested with a fake builder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from peftstudy.data.layout import write_lists, write_pool
from peftstudy.data.vtab_tasks import RECIPES, TASKS, Example, Slice, Task
from peftstudy.io import atomic_dir, write_json
from peftstudy.plan.specs import Options
from peftstudy.plan.stage_specs import VtabTfdsSpec


def to_rgb(image: np.ndarray, scale: int = 1) -> np.ndarray:
    """An (H, W, 3) uint8 image: grey ones (dSprites, smallNORB) repeated to three channels and multiplied by
    `scale`, as task_adaptation's preprocessing tiles them."""
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image * np.uint8(scale) if scale != 1 else image


POOLS = ("train800", "val200", "test")  # the archive's image folders, less train800val200's copies


def write(
    out_dir: str | Path, splits: Mapping[str, Iterable[tuple[np.ndarray, int]]], info: dict, manifest_path: str | Path
) -> None:
    """Write the train800, val200 and test examples as JPEG pools ``images/<split>/``, the four lists and the
    manifest. train800val200 lists the train800 and val200 files: the archive stored those images a second
    time, byte-identical (the same pixels through the same encoder), so sharing them changes nothing."""
    with atomic_dir(out_dir) as tmp:
        lists = {f"{name}.txt": write_pool(tmp, name, splits[name], ext="jpg") for name in POOLS}
        checksums, sizes = write_lists(tmp, lists)
    write_json(manifest_path, dict(info, lists=checksums, sizes=sizes), schema="manifest")


def _examples(name: str, task: Task, rows: Iterable[Example], part: Slice) -> Iterator[tuple[np.ndarray, int]]:
    """(image, label) of each TFDS example of one slice, with progress, checked: every label within the
    task's classes and as many examples as the slice holds (fewer means a damaged prepared dataset)."""
    count = 0
    for example in tqdm(rows, total=len(part), desc=f"{name} {part}", unit="img", mininterval=10):
        label = task.label(example)
        if not 0 <= label < task.classes:
            raise ValueError(f"{name} {part}: example {count} has label {label}, outside 0..{task.classes - 1}")
        yield to_rgb(np.asarray(example[task.image_key]), task.image_scale), label
        count += 1
    if count != len(part):
        raise ValueError(f"{name} {part}: TFDS gave {count} examples instead of {len(part)}; prepare it again")


def build(
    name: str,
    builder: Any,
    out_dir: str | Path,
    manifest_path: str | Path,
    as_numpy: Callable[[Any], Iterable[Example]],
    dataset: str = "",
) -> None:
    """Task `name` from a prepared TFDS `builder` (``info.splits``, ``info.version``, ``as_dataset``) in the
    processed layout; `as_numpy` turns what ``as_dataset`` returns into numpy examples."""
    task = TASKS[name]
    sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
    splits = RECIPES[task.recipe](sizes)
    parts = {pool: getattr(splits, pool) for pool in POOLS}
    examples = {
        # Unshuffled files: the slices are positions in the builder's fixed order.
        key: _examples(name, task, as_numpy(builder.as_dataset(split=str(part), shuffle_files=False)), part)
        for key, part in parts.items()
    }
    spec = {
        "task": name,
        "builder": task.builder,
        "version": str(builder.info.version),
        "recipe": task.recipe,
        "label": task.label.__name__,
        "splits": splits.tfds(),
        "tfds_sizes": sizes,
    }
    info = {"dataset": dataset or name, "source": "tfds", "classes": task.classes, "spec": spec}
    write(out_dir, examples, info, manifest_path)


def open_builder(builder: str, data_dir: str | Path) -> tuple[Any, Callable[[Any], Iterable[Example]]]:
    """The TFDS builder, downloaded and prepared under `data_dir` (a no-op once done), and TFDS's as_numpy.

    The one place TensorFlow is imported. Datasets TFDS cannot download (Diabetic Retinopathy) must be
    placed in ``<data_dir>/downloads/manual`` first.
    """
    import tensorflow_datasets as tfds

    prepared = tfds.builder(builder, data_dir=str(data_dir))
    prepared.download_and_prepare()
    return prepared, tfds.as_numpy


def run(spec: VtabTfdsSpec, options: Options) -> None:
    """`peftstudy run` of a vtab-tfds spec."""
    if spec.task not in TASKS:
        raise SystemExit(f"unknown task {spec.task!r}; known: {', '.join(TASKS)}")
    builder, as_numpy = open_builder(TASKS[spec.task].builder, spec.data_dir)
    build(spec.task, builder, spec.source, spec.manifest, as_numpy, dataset=spec.dataset)
