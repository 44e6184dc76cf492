"""`source: manyshot`: a subset (and fold) of CIFAR-100 or RESISC45 by the authors' split lists (fetched at a
pinned commit by the manyshot_lists rule) over an extracted archive's images (data.manyshot)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from peftstudy.plan import stage_specs
from peftstudy.plan.defaults import DEFAULTS
from peftstudy.plan.sources.archive import archive_checksum, check_archive, extracted
from peftstudy.plan.sources.base import ConfigError, Source, TrainSizes, register
from peftstudy.plan.tasks import MANYSHOT_FOLDED, check_subset

if TYPE_CHECKING:
    from peftstudy.plan.jobs import Plan

# The many-shot lists (docs/protocol.md §D.2): (tuning train, combined) images. CIFAR-100 500 is one of its five folds.
CIFAR100_SIZES = {"500": (400, 500), "1k": (800, 1_000), "5k": (4_500, 5_000), "10k": (9_000, 10_000)}
CIFAR100_SIZES["full"] = (49_000, 50_000)
RESISC45_FULL = 25_200  # the authors' pool train.txt; each subset tunes on 90 % (the folded ones on 80 %)


def lists_dir(kind: str, subset: str) -> str:
    """Where the manyshot_lists rule puts a subset's lists."""
    return f"resources/lists/petl_vision/{kind}-{subset}"


def lists_spec(config: Mapping[str, Any], kind: str, subset: str) -> stage_specs.ManyshotListsSpec:
    """A manyshot-lists job: the authors' lists of a subset, from `manyshot_lists.url` (default: theirs)."""
    lists = config.get("manyshot_lists", {})
    return stage_specs.ManyshotListsSpec(
        kind=kind,
        subset=subset,
        base_url=lists.get("url", ""),
        pins=lists.get("sha256", {}),
        lists=lists_dir(kind, subset),
    )


class Manyshot(Source):
    name = "manyshot"
    spec_class = stage_specs.ManyshotSpec
    required = frozenset({"kind", "subset", "archive"})
    optional = frozenset({"fold"})
    # Reads a whole archive's images: a cluster job.
    local = False
    resources: ClassVar[Mapping[str, int]] = {"mem_mb": 8000, "runtime": 60}
    code = ("src/peftstudy/data/manyshot.py",)

    def spec(self, plan: Plan, dataset: str) -> stage_specs.ManyshotSpec:
        """The subset's (and fold's) lists over the extracted archive's images."""
        entry = plan.datasets[dataset]
        return stage_specs.ManyshotSpec(
            kind=entry["kind"],
            subset=entry["subset"],
            fold=entry.get("fold", DEFAULTS["manyshot_fold"]),
            name=dataset,
            pins=plan.config.get("manyshot_lists", {}).get("sha256", {}),
            archive=extracted(entry["archive"]),
            checksum=archive_checksum(entry["archive"]),
            lists=lists_dir(entry["kind"], entry["subset"]),
            source=plan.layout.data_file(dataset, "source"),
            manifest=plan.layout.manifest(dataset),
        )

    def check(self, name: str, entry: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        try:
            check_subset(entry["kind"], str(entry["subset"]), entry.get("fold", 0))
        except ValueError as err:
            raise ConfigError(f"datasets.{name}: {err}") from None
        check_archive(name, entry, config)

    def archives(self, entry: Mapping[str, Any]) -> tuple[str, ...]:
        return (entry["archive"],)

    def train_sizes(self, config: Mapping[str, Any], dataset: str) -> TrainSizes:
        entry = config["datasets"][dataset]
        subset, folded = str(entry["subset"]), (entry["kind"], str(entry["subset"])) in MANYSHOT_FOLDED
        if entry["kind"] == "cifar100":
            return (*CIFAR100_SIZES[subset], "the authors' CIFAR-100 lists (docs/protocol.md §D.2)")
        images = RESISC45_FULL if subset == "full" else int(subset)
        return images * (8 if folded else 9) // 10, images, "the authors' RESISC45 lists (docs/protocol.md §D.2)"


register(Manyshot())
