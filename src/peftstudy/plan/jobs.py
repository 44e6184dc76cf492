"""What each job of a study is given: its spec (plan.specs: settings, input and output files), its inputs and its
resources, as pure functions of the config.

common.smk builds one :class:`Plan` and its input functions are one-liners over it, so what the DAG computes is
testable without Snakemake (and without torch: the method registry's settings modules import none).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from peftstudy import methods
from peftstudy.plan import depends, specs, study
from peftstudy.plan.defaults import DEFAULTS
from peftstudy.plan.layout import Layout
from peftstudy.plan.specs import FINAL
from peftstudy.plan.stages.data import DataJobs

# A job's resources when neither `resources.<kind>` nor the experiment's own set them.
JOB_DEFAULTS = {"mem_mb": 4000, "runtime": 60, "gpu": 0}
# The result tables the tables stage writes and the report reads.
TABLES = (
    "tune",
    "selection_vs_authors",
    "final",
    "results",
    "vtab",
    "group_means",
    "datasets",
    "experiments",
    "compute",
    "ensembles",
    "seed_ensembles",
    "agreement",
    "triples",
    "venn",
    "confidence",
    "ood",
    "wise",
    "mixed",
)
# The authors' numbers (docs/protocol.md §H), transcribed with their sources; copied beside our tables.
AUTHORS = ("vtab1k", "vtab1k_selection", "reruns", "manyshot", "clip_ood", "wise")
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
    def _specs(self) -> dict[tuple[str, ...], specs.Spec]:
        """(stage, wildcards...) -> the job's spec, filled as asked: a rule asks for a job's inputs and its
        params separately, and the DAG asks for every job."""
        return {}

    @cached_property
    def data(self) -> DataJobs:
        return DataJobs(self)

    @cached_property
    def layout(self) -> Layout:
        return Layout(self.config, self.grids)

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
            "stage": only(self.file_specs),
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

    def tune_runs(self, experiment: str, method: str, pack: str) -> int:
        """The grid points one tune job trains."""
        return len(self.layout.tune_jobs[experiment, method][pack])

    def max_gpu(self, kind: str) -> int:
        """The most GPUs any experiment's `kind` jobs ask for (one rule serves every experiment)."""
        return max(self.resource_spec(kind, name)["gpu"] for name in self.experiments)

    # Backbones.

    def backbone_spec(self, experiment: str) -> Mapping[str, Any]:
        """The backbone an experiment fine-tunes: its own (`backbone: <name>` under `backbones`) or the study's."""
        name = self.experiments[experiment].get("backbone")
        return self.config["backbones"][name] if name else self.config["backbone"]

    def backbone_weights(self, experiment: str) -> str:
        spec = self.backbone_spec(experiment)
        return self.layout.pretrain_file("backbone.safetensors") if spec["pretrain"] else spec["weights"]

    def backbone(self, experiment: str) -> specs.Backbone:
        """What an experiment's jobs build and which weights they load (checked against sha256)."""
        spec = self.backbone_spec(experiment)
        head = spec.get("zero_shot_head")
        return specs.Backbone(
            arch=spec["arch"],
            weights=self.backbone_weights(experiment),
            sha256=None if spec["pretrain"] else spec["sha256"],
            keep_head=self.experiments[experiment]["head"] == "pretrained",
            head=head["file"] if head else None,
        )

    def backbone_files(self, experiment: str) -> dict[str, str]:
        """The files a job of `experiment` reads besides data: weights, and CLIP's zero-shot head."""
        return specs.input_files(self.backbone(experiment))

    @cached_property
    def fetched_backbones(self) -> dict[str, str]:
        """weights file -> backbone name, for each backbone downloaded from its `source` (the fetch_backbone rule)."""
        return {spec["weights"]: name for name, spec in self.all_backbones.items() if "source" in spec}

    @cached_property
    def zero_shot_heads(self) -> dict[str, str]:
        """head file -> backbone name, for each backbone with CLIP's zero-shot head (the zero_shot_head rule)."""
        heads = {name: spec["zero_shot_head"] for name, spec in self.all_backbones.items() if "zero_shot_head" in spec}
        return {head["file"]: name for name, head in heads.items()}

    @property
    def allow_unpinned_arg(self) -> str:
        return "--allow-unpinned" if self.config.get("allow_unpinned", DEFAULTS["allow_unpinned"]) else ""

    def fetch_backbone_inputs(self, weights: str) -> list[str]:
        """A checkpoint fetched as one of `archives` first (CLIP: its text tower also makes the zero-shot head)."""
        url = self.all_backbones[self.fetched_backbones[weights]]["source"]["url"]
        return [url] if study.fetched_archive(url) else []

    def fetch_backbone_args(self, weights: str) -> str:
        """Where the backbone's weights come from, their pinned sum, and the config key that says so."""
        name = self.fetched_backbones[weights]
        spec = self.all_backbones[name]
        source = spec["source"]
        archive = study.fetched_archive(source["url"])
        # Its own sum, else (a checkpoint fetched as an archive) the archive's.
        sha256 = source["sha256"] or (archive and self.config["archives"][archive]["sha256"])
        key = "backbone.source" if name == "backbone" else f"backbones.{name}.source"
        return (
            f"--url {shlex.quote(source['url'])} --sha256 {sha256 or 'none'} {self.allow_unpinned_arg}"
            f" --config-key {key} --format {source['format']} --arch {spec['arch']}"
        )

    def zero_shot_head_spec(self, head: str) -> specs.ZeroShotHeadSpec:
        """A zero-shot-head job: the full CLIP checkpoint (its text tower), the class names, the open_clip config."""
        spec = self.all_backbones[self.zero_shot_heads[head]]["zero_shot_head"]
        return specs.ZeroShotHeadSpec(
            clip=study.archive_path(spec["clip_archive"]),
            classnames=spec["classnames"],
            clip_model=spec.get("clip_model", DEFAULTS["clip_model"]),
            device=self.config["device"],
            head=head,
        )

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

    def pack_points(self, experiment: str, method: str, pack: str) -> list[specs.GridPoint]:
        """The grid points a tune job trains, in order."""
        try:
            gps = self.layout.tune_jobs[experiment, method][pack]
        except KeyError:
            raise ValueError(
                f"tune job {pack} is not a grid point or pack of {method} in experiment {experiment}; "
                "request only jobs of the current config"
            ) from None
        grid = self.grids[experiment, method]
        return [specs.GridPoint(gp=gp, hp=grid[gp]) for gp in gps]

    def final_hp(self, experiment: str, dataset: str, method: str, gp: str) -> dict[str, Any]:
        """A final's grid point settings; where the point left the grid, what to do about it: a point the
        experiment's selected.json chose is a selection made before the grid was edited."""
        try:
            return self.grids[experiment, method][gp]
        except KeyError:
            pass
        selected = self.layout.selected(experiment)
        try:
            with open(selected) as handle:
                chose = json.load(handle)["datasets"][dataset][method].get("gp")
        except (OSError, ValueError, KeyError):
            chose = None
        if chose == gp:
            raise ValueError(
                f"{selected} chose grid point {gp} for {method} on {dataset}, which is no longer in the grid of "
                f"experiment {experiment}: that selection predates an edit of the grid, which --rerun-triggers mtime "
                "does not see (it reruns no job whose params alone changed). Select again on the current grid: add "
                "--forcerun select (or run without --rerun-triggers mtime)"
            )
        raise ValueError(
            f"grid point {gp} is not in the grid of {method} in experiment {experiment}: ask only for the finals of "
            "points of the current grid"
        )

    def selection(self, experiment: str) -> dict[str, str]:
        chosen = self.experiments[experiment]["selection"]
        return {"tie_break": chosen["tie_break"], "metric": chosen.get("metric", DEFAULTS["selection_metric"])}

    def select_spec(self, experiment: str) -> specs.SelectSpec:
        """A select job: each method's grid (its points' settings, in grid order: ties), each dataset's tuning
        sets, the points per tune job (which job holds which point), the tie-break and the metric, and every tune
        job's file in the plan's order."""
        key = ("select", experiment)
        if key not in self._specs:
            exp, rule = self.experiments[experiment], self.selection(experiment)
            grids = self.grids
            self._specs[key] = specs.SelectSpec(
                grids={
                    m: tuple(specs.GridPoint(gp=gp, hp=hp) for gp, hp in grids[experiment, m].items())
                    for m in exp["methods"]
                },
                datasets={d: tuple(self.tuning_sets(d)) for d in exp["datasets"]},
                runs_per_job=study.runs_per_job(exp, "tune"),
                tie_break=rule["tie_break"],
                metric=rule["metric"],
                metrics=tuple(self.tune_metrics(experiment)),
                selected=self.layout.selected(experiment),
                summary=self.layout.selection_file(experiment, "tune.csv"),
            )
        return self._specs[key]

    @property
    def file_specs(self) -> dict[str, Callable[[str], specs.Spec]]:
        """The specs handed over as files (`as_file`) that the plan alone makes, by stage: select's, by experiment
        (rule spec_file). The tables' needs every selection made: common.smk makes it (rule tables_spec)."""
        return {"select": self.select_spec}

    def file_spec(self, stage: str, name: str) -> specs.Spec:
        return self.file_specs[stage](name)

    # Training jobs.

    def pretrain_spec(self) -> specs.PretrainSpec:
        """The pretrain job (backbone.pretrain true): the study backbone's architecture trained from scratch on
        pretrain.dataset with pretrain's recipe, lr and wd, the study's seed."""
        pretrain = self.config["pretrain"]
        return specs.PretrainSpec(
            arch=self.config["backbone"]["arch"],
            recipe=pretrain["recipe"],
            lr=pretrain["lr"],
            wd=pretrain["wd"],
            seed=self.config["seed"],
            device=self.config["device"],
            train=self.layout.data(pretrain["dataset"], "train"),
            val=self.layout.data(pretrain["dataset"], "val"),
            weights=self.layout.pretrain_file("backbone.safetensors"),
            metrics=self.layout.pretrain_file("metrics.json"),
        )

    def run_settings(self, experiment: str, dataset: str, method: str) -> specs.RunSettings:
        """What the tune and final jobs of a (experiment, dataset, method) share: recipe, backbone, device, resume
        folder."""
        return specs.RunSettings(
            experiment=experiment,
            dataset=dataset,
            method=method,
            recipe=self.experiments[experiment]["recipe"],
            backbone=self.backbone(experiment),
            device=self.config["device"],
            resume_dir=self.layout.resume_dir(experiment, dataset, method),
        )

    def tune_spec(self, experiment: str, dataset: str, method: str, pack: str) -> specs.TuneSpec:
        """A tune job: its grid points in order, the study's seed; train and val only (no tune job can see the
        test split)."""
        key = ("tune", experiment, dataset, method, pack)
        if key not in self._specs:
            self._specs[key] = specs.TuneSpec(
                run=self.run_settings(experiment, dataset, method),
                points=tuple(self.pack_points(experiment, method, pack)),
                seed=self.config["seed"],
                train=self.layout.data(dataset, "train"),
                val=self.layout.data(dataset, "val"),
                manifest=self.layout.manifest(dataset),
                metrics=self.layout.tune_file(experiment, dataset, method, pack, "metrics.json"),
            )
        return self._specs[key]

    def final_spec(self, experiment: str, dataset: str, method: str, gp: str, seed: str) -> specs.FinalSpec:
        """A final job: the grid point and one seed, trained on train+val, scored on test."""
        key = ("final", experiment, dataset, method, gp, seed)
        if key not in self._specs:
            point = specs.GridPoint(gp=gp, hp=self.final_hp(experiment, dataset, method, gp))
            out = {
                role: self.layout.final_file(experiment, dataset, method, gp, seed, name)
                for role, name in dataclasses.asdict(FINAL).items()
            }
            self._specs[key] = specs.FinalSpec(
                run=self.run_settings(experiment, dataset, method),
                point=point,
                seed=int(seed),
                train=self.layout.data(dataset, "trainval"),
                test=self.layout.data(dataset, "test"),
                manifest=self.layout.manifest(dataset),
                **out,
            )
        return self._specs[key]

    def tuning_sets(self, dataset: str) -> list[str]:
        return study.tuning_sets(self.config, dataset)

    def tune_metrics(self, experiment: str) -> list[str]:
        """Every tune result of the experiment: each method on each dataset and on each of its tuning folds."""
        exp = self.experiments[experiment]
        tuning_sets = {dataset: self.tuning_sets(dataset) for dataset in exp["datasets"]}
        jobs = {method: self.layout.tune_jobs[experiment, method] for method in exp["methods"]}
        return [
            self.layout.tune_file(experiment, tuning_set, method, name, "metrics.json")
            for tuning_set, method, name, _ in study.selection_jobs(tuning_sets, jobs)
        ]

    # Analysis, robustness, tables.

    def collect_spec(
        self, experiment: str, dataset: str, method: str, choice: Mapping[str, Any], finals: Iterable[str]
    ) -> specs.CollectSpec:
        """A collect job: its own entry of the experiment's selected.json and the selected finals' files (known once
        the selection checkpoint ran, so common.smk resolves them); its spec names their metrics."""
        metrics = tuple(path for path in finals if os.path.basename(path) == FINAL.metrics)
        record = self.layout.final_record(experiment, dataset, method)
        return specs.CollectSpec(
            experiment=experiment, dataset=dataset, method=method, choice=choice, metrics=metrics, record=record
        )

    def ensemble_spec(self, experiment: str, dataset: str) -> specs.EnsembleSpec:
        """An ensemble job: every method's final record on the dataset, the methods ensembled, K."""
        return specs.EnsembleSpec(
            finals=tuple(
                self.layout.final_record(experiment, dataset, m) for m in self.experiments[experiment]["methods"]
            ),
            methods=tuple(self.analysis_methods(experiment)),
            confident_k=self.confident_k(),
            ensembles=self.layout.analysis_file(experiment, dataset, "ensembles.json"),
            agreement=self.layout.analysis_file(experiment, dataset, "agreement.json"),
        )

    def analysis_methods(self, experiment: str) -> list[str]:
        """The methods whose pairs and triples are ensembled: analysis.methods, else all."""
        chosen = self.config.get("analysis", {}).get("methods", {})
        return chosen.get(experiment, self.experiments[experiment]["methods"])

    def confident_k(self) -> float:
        return self.config.get("analysis", {}).get("confident_k", DEFAULTS["confident_k"])

    def robustness_sets(self) -> list[str]:
        """The robustness test sets: the in-distribution one first, then the shifted ones."""
        rob = self.robustness
        return [rob["dataset"], *rob["ood"]] if rob else []

    def robustness_experiment(self) -> str | None:
        return self.robustness["experiment"] if self.robustness else None

    def robustness_spec(self, method: str) -> specs.RobustnessSpec:
        """A robustness job: the method's final record on the in-distribution dataset, the backbone, each test set
        (the in-distribution one, the shifted ones), the WiSE mixing coefficients."""
        rob = self.robustness
        in_distribution, *shifted = (
            specs.EvalSet(name=name, test=self.layout.data(name, "test")) for name in self.robustness_sets()
        )
        return specs.RobustnessSpec(
            method=method,
            backbone=self.backbone(rob["experiment"]),
            final=self.layout.final_record(rob["experiment"], rob["dataset"], method),
            in_distribution=in_distribution,
            shifted=tuple(shifted),
            alphas=tuple(rob["alphas"]),
            class_subsets=self.class_subsets(),
            device=self.config["device"],
            ood=self.layout.robustness_file(method, "ood.json"),
            wise=self.layout.robustness_file(method, "wise.json"),
        )

    def class_subsets(self) -> dict[str, Any]:
        """The robustness test sets that cover part of the label space, with their classes (or mask's name)."""
        return {
            n: self.datasets[n]["class_subset"] for n in self.robustness_sets() if "class_subset" in self.datasets[n]
        }

    def report_datasets(self) -> list[str]:
        """Datasets the study trains or tests on (their manifests give the report the split sizes)."""
        names = {d for exp in self.experiments.values() for d in exp["datasets"]}
        names |= set(self.robustness["ood"]) if self.robustness else set()
        return sorted(names)

    def table_inputs(self) -> dict[str, list[str]]:
        layout = self.layout
        return {
            "tune": layout.tune_summaries(),
            "tune_metrics": [path for experiment in self.experiments for path in self.tune_metrics(experiment)],
            "finals": layout.final_records(),
            "analysis": [output["path"] for output in layout.analysis_outputs()],
            "robustness": layout.robustness_outputs(),
            "manifests": [layout.manifest(d) for d in self.report_datasets()],
            "authors": [f"report/data/authors_{name}.csv" for name in AUTHORS],
            "benchmarks": [job["path"] for job in self.benchmarks()],
        }

    def tables_spec(
        self, context: Mapping[str, Any], final_benchmarks: Iterable[Mapping[str, str]]
    ) -> specs.TablesSpec:
        """The tables job: `context`, the report's (report_context and the cost estimate, plan.cost's); and the
        selected finals' benchmarks besides every other training job's (known once the selections are made)."""
        files = self.table_inputs()
        return specs.TablesSpec(
            study=self.config["study"],
            config_hash=self.config_hash,
            context=context,
            tune=tuple(files["tune"]),
            tune_metrics=tuple(files["tune_metrics"]),
            finals=tuple(files["finals"]),
            analysis=tuple(self.layout.analysis_outputs()),
            robustness=tuple(files["robustness"]),
            manifests=tuple(files["manifests"]),
            benchmarks=(*self.benchmarks(), *final_benchmarks),
            authors=tuple(files["authors"]),
            out_dir=os.path.dirname(self.layout.table(TABLES[0])),
        )

    def benchmarks(self) -> list[dict[str, str]]:
        """The benchmarks of every training job known before selection (the finals' depend on it)."""
        return [*self.layout.tune_benchmarks(), *self.layout.other_benchmarks()]

    def report_context(self) -> dict[str, Any]:
        return study.report_context(self.config, self.grids)

    def report_spec(self) -> specs.ReportSpec:
        """The report job: the figures notebook and the page's template over the tables' folder."""
        return specs.ReportSpec(
            tables=os.path.dirname(self.layout.table(TABLES[0])),
            notebook="report/notebooks/figures.ipynb",
            template="report/templates/index.html.j2",
            tolerance=self.report_tolerance(),
            html=self.layout.report(),
            executed=self.layout.report_file("figures.ipynb"),
        )

    def report_tolerance(self) -> float:
        return self.config.get("report", {}).get("tolerance", DEFAULTS["report_tolerance"])
