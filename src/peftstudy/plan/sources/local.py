"""`source: local`: a folder already in the processed-VTAB layout (`path`), indexed (data.layout.run_index); and
what it shares with `source: archive` (a folder indexed where it lies)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from peftstudy.plan import stage_specs
from peftstudy.plan.sources.base import ConfigError, Source, register

if TYPE_CHECKING:
    from peftstudy.plan.jobs import Plan


class Indexed(Source):
    """A folder in the layout that no job writes: the index job links it into the dataset's `source/` and
    writes its manifest. Its VTAB task (the folder's name, if one) has its classes checked."""

    spec_class = stage_specs.IndexSpec

    def folder(self, plan: Plan, dataset: str) -> str:
        """The folder in the layout."""
        raise NotImplementedError

    def origin(self, plan: Plan, dataset: str) -> tuple[str, str | None]:
        """What the folder comes from (an input of the index job) and its archive's sha256 file, if one."""
        raise NotImplementedError

    def record(self, plan: Plan, dataset: str) -> dict[str, Any]:
        """Where the folder came from, for its manifest (and so every result's provenance)."""
        raise NotImplementedError

    def spec(self, plan: Plan, dataset: str) -> stage_specs.IndexSpec:
        origin, checksum = self.origin(plan, dataset)
        return stage_specs.IndexSpec(
            dataset=dataset,
            folder=self.folder(plan, dataset),
            classes=plan.datasets[dataset]["classes"],
            about=self.record(plan, dataset),
            origin=origin,
            checksum=checksum,
            source=plan.layout.data_file(dataset, "source"),
            manifest=plan.layout.manifest(dataset),
        )

    def check(self, name: str, entry: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        from peftstudy.plan.tasks import task_table

        task, tasks = self.vtab_task(entry), task_table()
        if task in tasks and tasks[task].classes != entry["classes"]:
            raise ConfigError(f"datasets.{name}.classes: the VTAB task {task} has {tasks[task].classes} classes")


class Local(Indexed):
    name = "local"
    required = frozenset({"path"})
    doctor = "peftstudy.doctor:check_folder"

    def folder(self, plan: Plan, dataset: str) -> str:
        return plan.datasets[dataset]["path"]

    def origin(self, plan: Plan, dataset: str) -> tuple[str, str | None]:
        return self.folder(plan, dataset), None

    def record(self, plan: Plan, dataset: str) -> dict[str, Any]:
        return {"source": "local", "path": plan.datasets[dataset]["path"]}

    def vtab_task(self, entry: Mapping[str, Any]) -> str | None:
        return str(entry["path"]).rstrip("/").rpartition("/")[2]


register(Local())
