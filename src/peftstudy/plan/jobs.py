"""What each job of a study is given: its spec (plan.specs: settings, input and output files), its inputs and its
resources, as pure functions of the config.

common.smk builds one :class:`Plan` and its input functions are one-liners over it, so what the DAG computes is
testable without Snakemake (and without torch: the method registry's settings modules import none).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from peftstudy import methods
from peftstudy.plan import depends, study
from peftstudy.plan.defaults import DEFAULTS
from peftstudy.plan.layout import Layout
from peftstudy.plan.stages.analysis import AnalysisJobs
from peftstudy.plan.stages.data import DataJobs
from peftstudy.plan.stages.report import ReportJobs
from peftstudy.plan.stages.selection import SelectionJobs
from peftstudy.plan.stages.train import TrainJobs

# A job's resources when neither `resources.<kind>` nor the experiment's own set them.
JOB_DEFAULTS = {"mem_mb": 4000, "runtime": 60, "gpu": 0}
SPLITS = ("train", "val", "trainval", "test")


def only(names: Iterable[str]) -> str:
    """A wildcard constraint matching exactly these names (none: matches nothing)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


@dataclass(frozen=True)
class Plan:
    """A checked study config and everything its jobs are given."""

    config: Mapping[str, Any]
    # (experiment, method) -> {gp id: hp}, in grid order: expanded once, by the check (study.check).
    grids: study.Grids

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Plan:
        """The plan of a config that passed the JSON schema: cross-checked here (ConfigError names the key)."""
        return cls(config, study.check(config))

    @cached_property
    def _code_digests(self) -> dict[str, str]:
        """method -> :meth:`code_digest`, filled as asked."""
        return {}

    @cached_property
    def analysis(self) -> AnalysisJobs:
        return AnalysisJobs(self)

    @cached_property
    def report(self) -> ReportJobs:
        return ReportJobs(self)

    @cached_property
    def data(self) -> DataJobs:
        return DataJobs(self)

    @cached_property
    def layout(self) -> Layout:
        return Layout(self.config, self.grids)

    @cached_property
    def train(self) -> TrainJobs:
        return TrainJobs(self)

    @cached_property
    def selection(self) -> SelectionJobs:
        return SelectionJobs(self)

    @property
    def experiments(self) -> Mapping[str, Any]:
        return self.config["experiments"]

    @property
    def datasets(self) -> Mapping[str, Any]:
        return self.config["datasets"]

    @property
    def robustness(self) -> Mapping[str, Any] | None:
        return self.config.get("robustness")

    @cached_property
    def all_backbones(self) -> dict[str, Mapping[str, Any]]:
        """The study's backbone and the other named ones: each gets its fetch (and CLIP's zero-shot head) job."""
        return {"backbone": self.config["backbone"], **self.config.get("backbones", {})}

    @cached_property
    def config_hash(self) -> str:
        return study.config_hash(self.config)

    # Wildcard constraints.

    def constraints(self) -> dict[str, str]:
        return {
            "experiment": only(self.experiments),
            "dataset": only(sorted(self.datasets, key=len, reverse=True)),
            "method": only(methods.names()),
            "gp": "[0-9a-f]{8}",
            "pack": r"[0-9a-f]{8}|pack\d+-\d+",
            "seed": r"\d+",
            "split": only(SPLITS),
            "stage": only(self.selection.file_specs),
        }

    # Resources.

    def resource_spec(self, kind: str, experiment: str | None) -> dict[str, Any]:
        """`resources.<kind>` of the study config, overridden by the experiment's own
        (`experiments.<name>.resources.<kind>`; a CLIP run needs more than a VTAB one)."""
        own = self.experiments[experiment].get("resources", {}).get(kind, {}) if experiment else {}
        return {**JOB_DEFAULTS, **self.config.get("resources", {}).get(kind, {}), **own}

    def resources(self, kind: str, experiment: str | None = None, runs: int = 1) -> dict[str, Any]:
        """What a cluster job of `kind` asks for; the GPU count left out when 0 (CPU studies send no GPU request).
        A tune job's runtime is per run: a job training `runs` grid points asks for that many."""
        spec = self.resource_spec(kind, experiment)
        spec["runtime"] *= runs
        return {k: v for k, v in spec.items() if k != "gpu" or v}

    def max_gpu(self, kind: str) -> int:
        """The most GPUs any experiment's `kind` jobs ask for (one rule serves every experiment)."""
        return max(self.resource_spec(kind, name)["gpu"] for name in self.experiments)

    # Downloads.

    @property
    def allow_unpinned_arg(self) -> str:
        """`--allow-unpinned` where the config allows it: an option of every download (fetch, fetch_backbone)."""
        return "--allow-unpinned" if self.config.get("allow_unpinned", DEFAULTS["allow_unpinned"]) else ""

    # Methods and grids.

    def method_sources(self, method: str) -> list[str]:
        """A method's own modules (settings and layers): inputs of its robustness job."""
        return [os.path.relpath(path) for path in methods.source_files(method)]

    def code_digest(self, method: str) -> str:
        """The code a tune or final run of `method` depends on (plan.depends.code_digest: every package module it
        imports, normalised), a `params` value of its jobs: Snakemake reruns exactly the jobs whose code changed,
        as the jobs' own reuse (their dependencies' `code`) would, and a comment or docstring edit reruns none."""
        if method not in self._code_digests:  # once per method: the DAG asks for every tune and final job
            self._code_digests[method] = depends.code_digest(method)
        return self._code_digests[method]

    # Training jobs.

    def tune_metrics(self, experiment: str) -> list[str]:
        """Every tune result of the experiment: each method on each dataset and on each of its tuning folds."""
        exp = self.experiments[experiment]
        tuning_sets = {dataset: self.train.tuning_sets(dataset) for dataset in exp["datasets"]}
        jobs = {method: self.layout.tune_jobs[experiment, method] for method in exp["methods"]}
        return [
            self.layout.tune_file(experiment, tuning_set, method, name, "metrics.json")
            for tuning_set, method, name, _ in study.selection_jobs(tuning_sets, jobs)
        ]
