"""The data jobs: each dataset's source job (its layout folder and manifest, built by its source in
plan.sources), one prepare job per split, the archives' fetch and extract, the many-shot lists."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

from peftstudy.plan import sources, specs, stage_specs
from peftstudy.plan.sources import manyshot
from peftstudy.plan.sources.base import Source

if TYPE_CHECKING:
    from peftstudy.plan.jobs import Plan


class DataJobs:
    """What each data job of a study is given, asked of each dataset's source."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    @cached_property
    def _source_specs(self) -> dict[str, specs.Spec]:
        """dataset -> its source job's spec, filled as asked (the rule asks for its inputs and its params)."""
        return {}

    def source(self, dataset: str) -> Source:
        return sources.of(self.plan.datasets[dataset])

    def datasets_where(self, local: bool) -> list[str]:
        """The datasets whose source job runs where Snakemake runs (`local`), or as a cluster job."""
        return [name for name in self.plan.datasets if self.source(name).local == local]

    def source_spec(self, dataset: str) -> specs.Spec:
        """The job that writes the dataset's layout folder (`source/`) and manifest."""
        if dataset not in self._source_specs:
            self._source_specs[dataset] = self.source(dataset).spec(self.plan, dataset)
        return self._source_specs[dataset]

    def source_inputs(self, dataset: str) -> dict[str, Any]:
        """The source job's input files, and the code its output is made by (an edit reruns it)."""
        code = self.source(dataset).code
        return {**self.source_spec(dataset).inputs(), **({"code": list(code)} if code else {})}

    def resources(self, local: bool) -> dict[str, Callable[[Any], int]]:
        """The resources a generic source rule asks for, each a function of the job's dataset: every resource any
        of its sources names (a cluster rule: at least memory and runtime), 0 where a source does not."""
        names = {key for name in self.datasets_where(local) for key in self.source(name).resources}
        names |= set() if local else set(self.cluster_defaults)
        return {key: self._resource(key, {} if local else self.cluster_defaults) for key in sorted(names)}

    @cached_property
    def cluster_defaults(self) -> dict[str, int]:
        """A cluster job's memory and runtime where its source sets none: any job's defaults (plan.jobs)."""
        return {key: value for key, value in self.plan.resource_spec("data", None).items() if key != "gpu"}

    def _resource(self, key: str, defaults: Mapping[str, int]) -> Callable[[Any], int]:
        return lambda wildcards: {**defaults, **self.source(wildcards.dataset).resources}.get(key, 0)

    def prepare_spec(self, dataset: str, split: str) -> stage_specs.PrepareSpec:
        """A prepare job: one split of the dataset's layout folder decoded at the cache's size."""
        return stage_specs.PrepareSpec(
            source=self.plan.layout.data_file(dataset, "source"),
            manifest=self.plan.layout.manifest(dataset),
            split=split,
            image_size=self.cache_size(dataset),
            cache=self.plan.layout.data(dataset, split),
        )

    def cache_size(self, dataset: str) -> int:
        """The prepared cache's image size: the backbone's, or 0 (native) where the dataset asks for it."""
        return 0 if self.plan.datasets[dataset].get("cache") == "native" else self.plan.config["backbone"]["image_size"]

    def manyshot_lists_spec(self, kind: str, subset: str) -> stage_specs.ManyshotListsSpec:
        return manyshot.lists_spec(self.plan.config, kind, subset)

    # Archives (rules fetch and extract).

    @property
    def archives(self) -> Mapping[str, Any]:
        return self.plan.config.get("archives", {})

    def extract_limit(self, archive: str) -> str:
        """The unpacking's size limit, where the archive sets one."""
        limit = self.archives[archive].get("max_unpacked_gb")
        return f"--max-unpacked-gb {limit}" if limit is not None else ""
