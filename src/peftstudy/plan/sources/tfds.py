"""`source: tfds`: a VTAB-1K task built from TensorFlow Datasets with VTAB's split recipe (data.vtab_tfds)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from peftstudy.plan import stage_specs
from peftstudy.plan.defaults import DEFAULTS
from peftstudy.plan.sources.base import ConfigError, Source, register

if TYPE_CHECKING:
    from peftstudy.plan.jobs import Plan


class Tfds(Source):
    name = "tfds"
    spec_class = stage_specs.VtabTfdsSpec
    required = frozenset({"vtab_task"})
    # Downloads: runs where Snakemake runs. Tasks sharing a builder (CLEVR, dSprites, smallNORB) never prepare it
    # at once: the profiles allow one tfds_builder at a time.
    resources: ClassVar[Mapping[str, int]] = {"tfds_builder": 1}
    doctor = "peftstudy.doctor:check_tfds"

    def spec(self, plan: Plan, dataset: str) -> stage_specs.VtabTfdsSpec:
        """The dataset's VTAB task built from TFDS in `tfds_data_dir`."""
        return stage_specs.VtabTfdsSpec(
            task=plan.datasets[dataset]["vtab_task"],
            data_dir=plan.config.get("tfds_data_dir", DEFAULTS["tfds_data_dir"]),
            dataset=dataset,
            source=plan.layout.data_file(dataset, "source"),
            manifest=plan.layout.manifest(dataset),
        )

    def check(self, name: str, entry: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        from peftstudy.plan.tasks import task_table

        task, tasks = entry["vtab_task"], task_table()
        if task not in tasks:
            raise ConfigError(f"datasets.{name}.vtab_task: unknown task {task!r}; known: {', '.join(tasks)}")
        if tasks[task].classes != entry["classes"]:
            raise ConfigError(f"datasets.{name}.classes: the VTAB task {task} has {tasks[task].classes} classes")

    def vtab_task(self, entry: Mapping[str, Any]) -> str | None:
        return entry["vtab_task"]


register(Tfds())
