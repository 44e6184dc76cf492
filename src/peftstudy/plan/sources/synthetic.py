"""`source: synthetic`: a dataset rendered from its config entry and the study's seed (data.synthetic)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from peftstudy.plan import stage_specs
from peftstudy.plan.sources.base import ConfigError, Source, TrainSizes, data_spec, register

if TYPE_CHECKING:
    from peftstudy.plan.jobs import Plan


class Synthetic(Source):
    name = "synthetic"
    spec_class = stage_specs.GenerateSpec
    required = frozenset({"task", "test"})
    optional = frozenset({"style"})
    code = ("src/peftstudy/data/synthetic.py",)

    def spec(self, plan: Plan, dataset: str) -> stage_specs.GenerateSpec:
        """What a synthetic dataset is rendered from (its entry without the report's keys, at the input size) and
        the study's seed."""
        return stage_specs.GenerateSpec(
            dataset=dataset,
            rendering=dict(data_spec(plan.datasets[dataset]), image_size=plan.config["backbone"]["image_size"]),
            seed=plan.config["seed"],
            source=plan.layout.data_file(dataset, "source"),
            manifest=plan.layout.manifest(dataset),
        )

    def check_trained(self, name: str, entry: Mapping[str, Any], experiment: str) -> None:
        if entry.get("train", 0) < 1 or entry.get("val", 0) < 1:
            raise ConfigError(f"datasets.{name}: experiment {experiment} trains on it, so it needs train and val sizes")

    def train_sizes(self, config: Mapping[str, Any], dataset: str) -> TrainSizes | None:
        entry = config["datasets"][dataset]
        if "train" in entry and "val" in entry:
            return entry["train"], entry["train"] + entry["val"], "the config's train and val"
        return None

    def split_sizes(self, config: Mapping[str, Any], dataset: str) -> tuple[int, int, int]:
        entry = config["datasets"][dataset]  # a shifted test set has no train or val
        return entry.get("train", 0), entry.get("train", 0) + entry.get("val", 0), entry["test"]


register(Synthetic())
