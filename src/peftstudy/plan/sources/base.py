"""What a data source declares: its config keys and checks, the job that writes its dataset's layout folder and
manifest, where that job runs and what it asks for, where the data came from, its training-set sizes for the
estimate and what the doctor checks. Standard library only, like the whole planning package."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from peftstudy.plan import specs

if TYPE_CHECKING:
    from peftstudy.plan.jobs import Plan

# (images a tune run trains on, images a final run trains on, where the sizes come from)
TrainSizes = tuple[int, int, str]


# Dataset keys read by the report only: left out of what makes the data, so that grouping reruns no job but tables.
REPORT_DATASET_KEYS = ("group", "size_of")


def data_spec(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A dataset's config entry without the report's keys: what a synthetic dataset is rendered from."""
    return {k: v for k, v in entry.items() if k not in REPORT_DATASET_KEYS}


class ConfigError(ValueError):
    """A config the plan refuses: the message names the key and the fix (plan.study re-exports it)."""


class Source:
    """One kind of `datasets.<name>.source`, defined by its module of plan.sources (a subclass that sets the class
    attributes and :meth:`spec`, and registers an instance: :func:`register`). Each method here has the behaviour
    of a source that needs nothing more (no checks, no sizes, nothing for the doctor).

    Every source's job writes the same two outputs, the dataset's layout folder `source/` and its manifest (the
    generic data rules declare one output shape for all: Snakemake cannot vary outputs by wildcard value)."""

    name: ClassVar[str]
    # The spec class of its job (a Spec subclass with `source` and `manifest` output files).
    spec_class: ClassVar[type[specs.Spec]]
    # Its dataset keys: those it needs, and those it may have besides.
    required: ClassVar[frozenset[str]] = frozenset()
    optional: ClassVar[frozenset[str]] = frozenset()
    # Its job runs where Snakemake runs (it downloads, or gates on the user's files, or is too quick to queue).
    local: ClassVar[bool] = True
    # What its job asks for (a cluster job: mem_mb and runtime; a local one: e.g. a shared lock).
    resources: ClassVar[Mapping[str, int]] = {}
    # The code its output is made by, beyond the spec: an edit reruns the job (as any rule's code input does).
    code: ClassVar[tuple[str, ...]] = ()
    # What `peftstudy doctor` checks of a dataset of this source besides its archives: `module:function`, called
    # with (plan, dataset, probes, net) and returning its Check lines; imported by the doctor only, so no stage
    # that reads a spec brings the doctor's imports. "": nothing to check.
    doctor: ClassVar[str] = ""

    def spec(self, plan: Plan, dataset: str) -> specs.Spec:
        """The job that writes the dataset's layout folder and manifest."""
        raise NotImplementedError(f"source {self.name} builds no job")

    def check(self, name: str, entry: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        """Its own checks of `datasets.<name>` (ConfigError naming `datasets.<name>.<key>` and the fix); the keys
        are checked before (:func:`peftstudy.plan.sources.check`)."""

    def check_trained(self, name: str, entry: Mapping[str, Any], experiment: str) -> None:
        """What an experiment training on the dataset needs of its entry."""

    def archives(self, entry: Mapping[str, Any]) -> tuple[str, ...]:
        """The entries under `archives` the dataset is read from (the doctor checks each once)."""
        return ()

    def vtab_task(self, entry: Mapping[str, Any]) -> str | None:
        """The VTAB task the dataset's images are, if any (its classes are checked, the report compares)."""
        return None

    def train_sizes(self, config: Mapping[str, Any], dataset: str) -> TrainSizes | None:
        """The estimate's training-set sizes where the source knows them (None: by its VTAB task, plan.cost)."""
        return None

    def split_sizes(self, config: Mapping[str, Any], dataset: str) -> tuple[int, int, int] | None:
        """(tune train, train+val, test) images where the config gives them (None: the estimate's and VTAB's)."""
        return None


# Every source by name: each source module registers its own when imported (plan.sources imports them all).
SOURCES: dict[str, Source] = {}


def register(source: Source) -> None:
    if source.name in SOURCES:
        raise ValueError(f"data source {source.name!r} is registered twice")
    SOURCES[source.name] = source
