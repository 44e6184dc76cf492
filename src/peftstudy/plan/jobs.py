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
from peftstudy.plan import depends, specs, study
from peftstudy.plan.defaults import DEFAULTS
from peftstudy.plan.layout import Layout
from peftstudy.plan.stages.analysis import AnalysisJobs
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

    def datasets_from(self, *sources: str) -> list[str]:
        return study.datasets_from(self.config, *sources)

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

    # Data sources.

    def source_dir(self, dataset: str) -> str:
        """The dataset's folder in the processed-VTAB layout: inside an extracted archive, a local folder, or what
        the source's own rule writes (generated, sampled, built from TFDS)."""
        spec = self.datasets[dataset]
        if spec["source"] == "archive":
            return f"resources/data/{spec['archive']}/{spec['folder']}"
        if spec["source"] == "local":
            return spec["path"]
        return self.layout.data_file(dataset, "source")

    def source_inputs(self, dataset: str) -> dict[str, str]:
        """What a dataset's folder comes from: a rule's output (generated, extracted) or a local folder."""
        spec = self.datasets[dataset]
        if spec["source"] == "archive":
            return {"source": f"resources/data/{spec['archive']}", "checksum": archive_checksum(spec["archive"])}
        return {"source": self.source_dir(dataset)}

    def index_spec(self, dataset: str) -> specs.IndexSpec:
        """An index job: the manifest of a folder already in the layout (an archive's or a local one)."""
        return specs.IndexSpec(
            dataset=dataset,
            source=self.source_dir(dataset),
            classes=self.datasets[dataset]["classes"],
            about=self.source_record(dataset),
            checksum=self.source_inputs(dataset).get("checksum"),
            manifest=self.layout.manifest(dataset),
        )

    def manyshot_lists_spec(self, kind: str, subset: str) -> specs.ManyshotListsSpec:
        """A manyshot-lists job: the authors' lists of a subset, from `manyshot_lists.url` (default: theirs)."""
        lists = self.config.get("manyshot_lists", {})
        return specs.ManyshotListsSpec(
            kind=kind,
            subset=subset,
            base_url=lists.get("url", ""),
            pins=lists.get("sha256", {}),
            lists=manyshot_lists_dir(kind, subset),
        )

    def manyshot_spec(self, dataset: str) -> specs.ManyshotSpec:
        """A manyshot job: the subset's (and fold's) lists over the extracted archive's images."""
        spec = self.datasets[dataset]
        return specs.ManyshotSpec(
            kind=spec["kind"],
            subset=spec["subset"],
            fold=spec.get("fold", DEFAULTS["manyshot_fold"]),
            name=dataset,
            pins=self.config.get("manyshot_lists", {}).get("sha256", {}),
            archive=f"resources/data/{spec['archive']}",
            checksum=archive_checksum(spec["archive"]),
            lists=manyshot_lists_dir(spec["kind"], spec["subset"]),
            source=self.layout.data_file(dataset, "source"),
            manifest=self.layout.manifest(dataset),
        )

    def vtab_tfds_spec(self, dataset: str) -> specs.VtabTfdsSpec:
        """A vtab-tfds job: the dataset's VTAB task built from TFDS in `tfds_data_dir`."""
        return specs.VtabTfdsSpec(
            task=self.datasets[dataset]["vtab_task"],
            data_dir=self.config.get("tfds_data_dir", DEFAULTS["tfds_data_dir"]),
            dataset=dataset,
            source=self.layout.data_file(dataset, "source"),
            manifest=self.layout.manifest(dataset),
        )

    def source_record(self, dataset: str) -> dict[str, Any]:
        """Where a dataset came from, for its manifest (and so every result's provenance)."""
        spec = self.datasets[dataset]
        if spec["source"] == "archive":
            archive = self.config.get("archives", {})[spec["archive"]]
            return {"source": "archive", "archive": spec["archive"], "url": archive["url"], "folder": spec["folder"]}
        return {"source": "local", "path": spec["path"]}

    def generate_spec(self, dataset: str) -> specs.GenerateSpec:
        """A generate job: what a synthetic dataset is rendered from (its entry without the report's keys, at the
        input size) and the study's seed."""
        return specs.GenerateSpec(
            dataset=dataset,
            rendering=dict(study.data_spec(self.datasets[dataset]), image_size=self.config["backbone"]["image_size"]),
            seed=self.config["seed"],
            source=self.layout.data_file(dataset, "source"),
            manifest=self.layout.manifest(dataset),
        )

    def prepare_spec(self, dataset: str, split: str) -> specs.PrepareSpec:
        """A prepare job: one split of the dataset's layout folder decoded at the cache's size."""
        return specs.PrepareSpec(
            source=self.source_dir(dataset),
            manifest=self.layout.manifest(dataset),
            split=split,
            image_size=self.cache_size(dataset),
            cache=self.layout.data(dataset, split),
        )

    def cache_size(self, dataset: str) -> int:
        """The prepared cache's image size: the backbone's, or 0 (native) where the dataset asks for it."""
        return 0 if self.datasets[dataset].get("cache") == "native" else self.config["backbone"]["image_size"]

    def imagenet_spec(self, dataset: str) -> specs.ImagenetSpec:
        """An imagenet job: the set the user downloaded (`path`), checked; ImageNet-1K's few-shot draw."""
        spec = self.datasets[dataset]
        return specs.ImagenetSpec(
            imagenet_set=spec["set"],
            root=spec["path"],
            dataset=dataset,
            shots=spec.get("shots", DEFAULTS["imagenet_shots"]),
            val_per_class=spec.get("val_per_class", DEFAULTS["imagenet_val_per_class"]),
            seed=spec.get("sample_seed", DEFAULTS["imagenet_sample_seed"]),
            source=self.layout.data_file(dataset, "source"),
            manifest=self.layout.manifest(dataset),
            checked=self.layout.data_file(dataset, "checked.json"),
        )

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


def archive_checksum(archive: str) -> str:
    return f"{study.archive_path(archive)}.sha256"


def manyshot_lists_dir(kind: str, subset: str) -> str:
    return f"resources/lists/petl_vision/{kind}-{subset}"
