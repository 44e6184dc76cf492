"""The results layout of docs/architecture.md §4 as pure functions of a study config: every path a rule writes and every
path a later stage reads back, from one definition.

The rules take their output patterns from the same methods, called with wildcards (``"{experiment}"``) for
arguments, so a rule's output and the paths its readers ask for cannot drift apart. A tune job writes one
``metrics.json`` per job: the results of its grid points (one, or a pack of several; the first design had one file
per point, but one rule's outputs cannot vary in number with a wildcard).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from peftstudy.plan import study
from peftstudy.plan.specs import FINAL_FILES


@dataclass(frozen=True)
class Layout:
    config: Mapping[str, Any]
    # The config's expanded grids (study.grids) where the caller has them (the plan), else expanded here.
    grids: study.Grids | None = field(default=None, compare=False, repr=False)

    @cached_property
    def tune_jobs(self) -> dict[tuple[str, str], dict[str, list[str]]]:
        """(experiment, method) -> {pack name: grid-point ids}: study.tune_jobs, computed once."""
        return study.tune_jobs(self.config, self.grids)

    @property
    def root(self) -> str:
        return f"results/{self.config['study']}"

    def data(self, dataset: str, split: str) -> str:
        return self.data_file(dataset, f"{split}.npz")

    def manifest(self, dataset: str) -> str:
        return self.data_file(dataset, "manifest.json")

    def method_dir(self, experiment: str, dataset: str, method: str) -> str:
        return f"{self.root}/{experiment}/{dataset}/{method}"

    def runs(self) -> Iterator[tuple[str, str, str]]:
        """Every (experiment, dataset, method) of the study, in config order."""
        for name, exp in self.config["experiments"].items():
            for dataset in exp["datasets"]:
                for method in exp["methods"]:
                    yield name, dataset, method

    def tune_file(self, experiment: str, dataset: str, method: str, pack: str, name: str) -> str:
        """A file of one tune job: `pack` is its grid point's id, or pack<n>-<i> for a pack of points."""
        return f"{self.method_dir(experiment, dataset, method)}/tune/{pack}/{name}"

    def final_file(self, experiment: str, dataset: str, method: str, gp: str, seed: str, name: str) -> str:
        return f"{self.method_dir(experiment, dataset, method)}/final/{gp}/seed{seed}/{name}"

    def selection_file(self, experiment: str, name: str) -> str:
        """The selection of an experiment, every dataset's and method's: selected.json, tune.csv, select.log."""
        return f"{self.root}/{experiment}/{name}"

    def selected(self, experiment: str) -> str:
        return self.selection_file(experiment, "selected.json")

    def method_file(self, experiment: str, dataset: str, method: str, name: str) -> str:
        """collect's files (final.json, its log)."""
        return f"{self.method_dir(experiment, dataset, method)}/{name}"

    def spec_file(self, stage: str, name: str) -> str:
        """A job's spec handed over as a file (plan.specs.Spec.as_file), written by rule spec_file."""
        return f"{self.root}/specs/{stage}/{name}.json"

    def analysis_file(self, experiment: str, dataset: str, name: str) -> str:
        return f"{self.root}/{experiment}/{dataset}/analysis/{name}"

    def robustness_file(self, method: str, name: str) -> str:
        return f"{self.root}/robustness/{method}/{name}"

    def data_file(self, dataset: str, name: str) -> str:
        """A dataset's files besides the caches: its source folder, manifest, logs."""
        return f"{self.root}/data/{dataset}/{name}"

    def pretrain_file(self, name: str) -> str:
        return f"{self.root}/pretrain/{name}"

    def resume_dir(self, experiment: str, dataset: str, method: str) -> str:
        """Epoch checkpoints of a (experiment, dataset, method)'s runs: outside the declared outputs, so a failed
        or preempted job's retry finds them (Snakemake removes a failed job's outputs, not these)."""
        return f"{self.root}/resume/{experiment}/{dataset}/{method}"

    def tables_file(self, name: str) -> str:
        return f"{self.root}/tables/{name}"

    def table(self, name: str) -> str:
        return self.tables_file(f"{name}.csv")

    def report_file(self, name: str) -> str:
        return f"{self.root}/report/{name}"

    def final_files(self, experiment: str, dataset: str, method: str, gp: str) -> list[str]:
        seeds = self.config["experiments"][experiment]["seeds"]
        return [self.final_file(experiment, dataset, method, gp, seed, name) for seed in seeds for name in FINAL_FILES]

    def final_record(self, experiment: str, dataset: str, method: str) -> str:
        return self.method_file(experiment, dataset, method, "final.json")

    def final_records(self) -> list[str]:
        return [self.final_record(*run) for run in self.runs()]

    def tune_summaries(self) -> list[str]:
        return [self.selection_file(experiment, "tune.csv") for experiment in self.config["experiments"]]

    # Snakemake's benchmark.tsv of every training job, with what the job was: the tables take both from here, so
    # nothing reads a job's identity back from its path.

    def tune_benchmarks(self) -> list[dict[str, str]]:
        """Every tune job's (a grid point's, or a pack's), on each dataset and each of its tuning folds."""
        return [
            benchmark(
                "tune",
                self.tune_file(experiment, tuned, method, pack, "benchmark.tsv"),
                experiment,
                tuned,
                method,
                pack,
            )
            for experiment, dataset, method in self.runs()
            for tuned in study.tuning_sets(self.config, dataset)
            for pack in self.tune_jobs[experiment, method]
        ]

    def final_benchmarks(self, experiment: str, dataset: str, method: str, gp: str) -> list[dict[str, str]]:
        """A selected point's final jobs': one per seed."""
        return [
            benchmark(
                "final",
                self.final_file(experiment, dataset, method, gp, seed, "benchmark.tsv"),
                experiment,
                dataset,
                method,
                f"{gp}/seed{seed}",
            )
            for seed in self.config["experiments"][experiment]["seeds"]
        ]

    def other_benchmarks(self) -> list[dict[str, str]]:
        """The robustness jobs' and, when the study pretrains its backbone, the pretraining job's."""
        out = (
            [benchmark("pretrain", self.pretrain_file("benchmark.tsv"))] if self.config["backbone"]["pretrain"] else []
        )
        rob = self.config.get("robustness")
        if rob:
            out += [
                benchmark("robustness", self.robustness_file(m, "benchmark.tsv"), method=m)
                for m in self.config["experiments"][rob["experiment"]]["methods"]
            ]
        return out

    def report(self) -> str:
        return self.report_file("index.html")


def benchmark(
    phase: str, path: str, experiment: str = "", dataset: str = "", method: str = "", job: str = ""
) -> dict[str, str]:
    """A job's benchmark file and the job it measured: one row of the compute table."""
    return {"phase": phase, "experiment": experiment, "dataset": dataset, "method": method, "job": job, "path": path}
