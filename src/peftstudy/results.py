"""The results layout of DESIGN.md §4 as pure functions of a study config: every path the pipeline asks for.

common.smk builds one :class:`Layout` and its input functions delegate here, so the paths are testable
without Snakemake and the rule files stay short.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from peftstudy import config as study

FINAL_FILES = ("metrics.json", "logits.npz", "peft.safetensors")


@dataclass(frozen=True)
class Layout:
    config: Mapping[str, Any]

    @property
    def root(self) -> str:
        return f"results/{self.config['study']}"

    def data(self, dataset: str, split: str) -> str:
        return f"{self.root}/data/{dataset}/{split}.npz"

    def manifest(self, dataset: str) -> str:
        return f"{self.root}/data/{dataset}/manifest.json"

    def method_dir(self, experiment: str, dataset: str, method: str) -> str:
        return f"{self.root}/{experiment}/{dataset}/{method}"

    def runs(self) -> Iterator[tuple[str, str, str]]:
        """Every (experiment, dataset, method) of the study, in config order."""
        for name, exp in self.config["experiments"].items():
            for dataset in exp["datasets"]:
                for method in exp["methods"]:
                    yield name, dataset, method

    def tune_metrics(self, experiment: str, dataset: str, method: str, gps: list[str]) -> list[str]:
        return [f"{self.method_dir(experiment, dataset, method)}/tune/{gp}/metrics.json" for gp in gps]

    def final_files(self, experiment: str, dataset: str, method: str, gp: str) -> list[str]:
        base = f"{self.method_dir(experiment, dataset, method)}/final/{gp}"
        seeds = self.config["experiments"][experiment]["seeds"]
        return [f"{base}/seed{seed}/{name}" for seed in seeds for name in FINAL_FILES]

    def final_record(self, experiment: str, dataset: str, method: str) -> str:
        return f"{self.method_dir(experiment, dataset, method)}/final.json"

    def final_records(self) -> list[str]:
        return [self.final_record(*run) for run in self.runs()]

    def tune_summaries(self) -> list[str]:
        return [f"{self.method_dir(*run)}/tune.csv" for run in self.runs()]

    def analysis_outputs(self) -> list[str]:
        """Ensembles need two methods or more."""
        return [
            f"{self.root}/{name}/{dataset}/analysis/{kind}.json"
            for name, exp in self.config["experiments"].items()
            if len(exp["methods"]) > 1
            for dataset in exp["datasets"]
            for kind in ("ensembles", "agreement")
        ]

    def robustness_outputs(self) -> list[str]:
        rob = self.config.get("robustness")
        if not rob:
            return []
        methods = self.config["experiments"][rob["experiment"]]["methods"]
        return [f"{self.root}/robustness/{m}/{kind}.json" for m in methods for kind in ("ood", "wise")]

    def tune_benchmarks(self) -> list[str]:
        """Snakemake's benchmark file of every tune job: one per grid point, or one per pack of points."""
        packs = study.tune_packs(self.config)
        grids = study.grids(self.config)
        out = []
        for experiment, dataset, method in self.runs():
            base = f"{self.method_dir(experiment, dataset, method)}/tune"
            if (experiment, method) in packs:
                out += [f"{base}/pack-{study.pack_id(p)}/benchmark.tsv" for p in packs[experiment, method]]
            else:
                out += [f"{base}/{gp}/benchmark.tsv" for gp in grids[experiment, method]]
        return out

    def final_benchmarks(self, experiment: str, dataset: str, method: str, gp: str) -> list[str]:
        """The benchmark files of a selected point's final jobs: one per seed, or one per pack of seeds."""
        exp = self.config["experiments"][experiment]
        base = f"{self.method_dir(experiment, dataset, method)}/final/{gp}"
        size = study.runs_per_job(exp, "final")
        if size > 1:
            return [f"{base}/seeds-{'-'.join(map(str, s))}/benchmark.tsv" for s in study.chunks(exp["seeds"], size)]
        return [f"{base}/seed{s}/benchmark.tsv" for s in exp["seeds"]]

    def other_benchmarks(self) -> list[str]:
        """Robustness jobs and, when the study pretrains its backbone, the pretraining job."""
        out = [f"{self.root}/pretrain/benchmark.tsv"] if self.config["backbone"]["pretrain"] else []
        rob = self.config.get("robustness")
        if rob:
            out += [
                f"{self.root}/robustness/{m}/benchmark.tsv"
                for m in self.config["experiments"][rob["experiment"]]["methods"]
            ]
        return out

    def report(self) -> str:
        return f"{self.root}/report/index.html"
