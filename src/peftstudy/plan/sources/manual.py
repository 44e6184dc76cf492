"""`source: manual`: an ImageNet set the user downloaded to `path` (no public URL), checked by a gate that says
what to get and where, then listed (ImageNet-1K: the few-shot draw) with links into the folder (data.imagenet)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from peftstudy.plan import stage_specs
from peftstudy.plan.defaults import DEFAULTS
from peftstudy.plan.sources.base import ConfigError, Source, TrainSizes, register

if TYPE_CHECKING:
    from peftstudy.plan.jobs import Plan


class Manual(Source):
    name = "manual"
    spec_class = stage_specs.ImagenetSpec
    required = frozenset({"set", "path"})
    optional = frozenset({"shots", "val_per_class", "sample_seed"})
    code = ("src/peftstudy/data/imagenet.py",)
    doctor = "peftstudy.doctor:check_folder"  # the gate, in its job, checks what the folder holds

    def spec(self, plan: Plan, dataset: str) -> stage_specs.ImagenetSpec:
        """The set the user downloaded (`path`), checked; ImageNet-1K's few-shot draw."""
        entry = plan.datasets[dataset]
        return stage_specs.ImagenetSpec(
            imagenet_set=entry["set"],
            root=entry["path"],
            dataset=dataset,
            shots=entry.get("shots", DEFAULTS["imagenet_shots"]),
            val_per_class=entry.get("val_per_class", DEFAULTS["imagenet_val_per_class"]),
            seed=entry.get("sample_seed", DEFAULTS["imagenet_sample_seed"]),
            source=plan.layout.data_file(dataset, "source"),
            manifest=plan.layout.manifest(dataset),
        )

    def check(self, name: str, entry: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        if entry["classes"] != 1000:
            raise ConfigError(f"datasets.{name}: the ImageNet sets have classes: 1000 (labels stay 1000-way)")

    def train_sizes(self, config: Mapping[str, Any], dataset: str) -> TrainSizes:
        entry = config["datasets"][dataset]
        shots = entry.get("shots", DEFAULTS["imagenet_shots"])
        return shots * entry["classes"], shots * entry["classes"], f"{shots} shots x {entry['classes']} classes"


register(Manual())
