"""The training jobs' specs (``Plan.train``): the backbones an experiment fine-tunes and their downloads, CLIP's
zero-shot head, pretraining, and each tune and final job, with the grid points it trains."""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

from peftstudy.plan import specs, study
from peftstudy.plan.defaults import DEFAULTS
from peftstudy.plan.specs import FINAL

if TYPE_CHECKING:
    from peftstudy.plan.jobs import Plan


class TrainJobs:
    """What the pretrain, tune, final, fetch_backbone and zero_shot_head jobs of a study are given."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        # (stage, wildcards...) -> the job's spec, filled as asked: a rule asks for a job's inputs and its params
        # separately, and the DAG asks for every job.
        self._specs: dict[tuple[str, ...], specs.Spec] = {}

    @property
    def threads(self) -> int:
        """The threads of one training job (`threads`): a `peftstudy run` option, in no spec (reruns nothing)."""
        return self.plan.config["threads"]

    def tune_runs(self, experiment: str, method: str, pack: str) -> int:
        """The grid points one tune job trains."""
        return len(self.plan.layout.tune_jobs[experiment, method][pack])

    # Backbones.

    def backbone_spec(self, experiment: str) -> Mapping[str, Any]:
        """The backbone an experiment fine-tunes: its own (`backbone: <name>` under `backbones`) or the study's."""
        name = self.plan.experiments[experiment].get("backbone")
        return self.plan.config["backbones"][name] if name else self.plan.config["backbone"]

    def backbone_weights(self, experiment: str) -> str:
        spec = self.backbone_spec(experiment)
        return self.plan.layout.pretrain_file("backbone.safetensors") if spec["pretrain"] else spec["weights"]

    def backbone(self, experiment: str) -> specs.Backbone:
        """What an experiment's jobs build and which weights they load (checked against sha256)."""
        spec = self.backbone_spec(experiment)
        head = spec.get("zero_shot_head")
        return specs.Backbone(
            arch=spec["arch"],
            weights=self.backbone_weights(experiment),
            sha256=None if spec["pretrain"] else spec["sha256"],
            keep_head=self.plan.experiments[experiment]["head"] == "pretrained",
            head=head["file"] if head else None,
        )

    def backbone_files(self, experiment: str) -> dict[str, str]:
        """The files a job of `experiment` reads besides data: weights, and CLIP's zero-shot head."""
        return specs.input_files(self.backbone(experiment))

    @cached_property
    def fetched_backbones(self) -> dict[str, str]:
        """weights file -> backbone name, for each backbone downloaded from its `source` (the fetch_backbone rule)."""
        return {spec["weights"]: name for name, spec in self.plan.all_backbones.items() if "source" in spec}

    @cached_property
    def zero_shot_heads(self) -> dict[str, str]:
        """head file -> backbone name, for each backbone with CLIP's zero-shot head (the zero_shot_head rule)."""
        backbones = self.plan.all_backbones.items()
        heads = {name: spec["zero_shot_head"] for name, spec in backbones if "zero_shot_head" in spec}
        return {head["file"]: name for name, head in heads.items()}

    def fetch_backbone_inputs(self, weights: str) -> list[str]:
        """A checkpoint fetched as one of `archives` first (CLIP: its text tower also makes the zero-shot head)."""
        url = self.plan.all_backbones[self.fetched_backbones[weights]]["source"]["url"]
        return [url] if study.fetched_archive(url) else []

    def fetch_backbone_args(self, weights: str) -> str:
        """Where the backbone's weights come from, their pinned sum, and the config key that says so."""
        name = self.fetched_backbones[weights]
        spec = self.plan.all_backbones[name]
        source = spec["source"]
        archive = study.fetched_archive(source["url"])
        # Its own sum, else (a checkpoint fetched as an archive) the archive's.
        sha256 = source["sha256"] or (archive and self.plan.config["archives"][archive]["sha256"])
        key = "backbone.source" if name == "backbone" else f"backbones.{name}.source"
        return (
            f"--url {shlex.quote(source['url'])} --sha256 {sha256 or 'none'} {self.plan.allow_unpinned_arg}"
            f" --config-key {key} --format {source['format']} --arch {spec['arch']}"
        )

    def zero_shot_head_spec(self, head: str) -> specs.ZeroShotHeadSpec:
        """A zero-shot-head job: the full CLIP checkpoint (its text tower), the class names, the open_clip config."""
        spec = self.plan.all_backbones[self.zero_shot_heads[head]]["zero_shot_head"]
        return specs.ZeroShotHeadSpec(
            clip=study.archive_path(spec["clip_archive"]),
            classnames=spec["classnames"],
            clip_model=spec.get("clip_model", DEFAULTS["clip_model"]),
            device=self.plan.config["device"],
            head=head,
        )

    # Grid points.

    def tuning_sets(self, dataset: str) -> list[str]:
        """The datasets `dataset`'s grid is tuned on: itself and its tuning folds (select averages them)."""
        return study.tuning_sets(self.plan.config, dataset)

    def pack_points(self, experiment: str, method: str, pack: str) -> list[specs.GridPoint]:
        """The grid points a tune job trains, in order."""
        try:
            gps = self.plan.layout.tune_jobs[experiment, method][pack]
        except KeyError:
            raise ValueError(
                f"tune job {pack} is not a grid point or pack of {method} in experiment {experiment}; "
                "request only jobs of the current config"
            ) from None
        grid = self.plan.grids[experiment, method]
        return [specs.GridPoint(gp=gp, hp=grid[gp]) for gp in gps]

    def final_hp(self, experiment: str, dataset: str, method: str, gp: str) -> dict[str, Any]:
        """A final's grid point settings; where the point left the grid, what to do about it: a point the
        experiment's selected.json chose is a selection made before the grid was edited."""
        try:
            return self.plan.grids[experiment, method][gp]
        except KeyError:
            pass
        selected = self.plan.layout.selected(experiment)
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

    # Training jobs.

    def pretrain_spec(self) -> specs.PretrainSpec:
        """The pretrain job (backbone.pretrain true): the study backbone's architecture trained from scratch on
        pretrain.dataset with pretrain's recipe, lr and wd, the study's seed."""
        config, layout = self.plan.config, self.plan.layout
        pretrain = config["pretrain"]
        return specs.PretrainSpec(
            arch=config["backbone"]["arch"],
            recipe=pretrain["recipe"],
            lr=pretrain["lr"],
            wd=pretrain["wd"],
            seed=config["seed"],
            device=config["device"],
            train=layout.data(pretrain["dataset"], "train"),
            val=layout.data(pretrain["dataset"], "val"),
            weights=layout.pretrain_file("backbone.safetensors"),
            metrics=layout.pretrain_file("metrics.json"),
        )

    def run_settings(self, experiment: str, dataset: str, method: str) -> specs.RunSettings:
        """What the tune and final jobs of a (experiment, dataset, method) share: recipe, backbone, device, resume
        folder."""
        return specs.RunSettings(
            experiment=experiment,
            dataset=dataset,
            method=method,
            recipe=self.plan.experiments[experiment]["recipe"],
            backbone=self.backbone(experiment),
            device=self.plan.config["device"],
            resume_dir=self.plan.layout.resume_dir(experiment, dataset, method),
        )

    def tune_spec(self, experiment: str, dataset: str, method: str, pack: str) -> specs.TuneSpec:
        """A tune job: its grid points in order, the study's seed; train and val only (no tune job can see the
        test split)."""
        key = ("tune", experiment, dataset, method, pack)
        if key not in self._specs:
            layout = self.plan.layout
            self._specs[key] = specs.TuneSpec(
                run=self.run_settings(experiment, dataset, method),
                points=tuple(self.pack_points(experiment, method, pack)),
                seed=self.plan.config["seed"],
                train=layout.data(dataset, "train"),
                val=layout.data(dataset, "val"),
                manifest=layout.manifest(dataset),
                metrics=layout.tune_file(experiment, dataset, method, pack, "metrics.json"),
            )
        return self._specs[key]

    def final_spec(self, experiment: str, dataset: str, method: str, gp: str, seed: str) -> specs.FinalSpec:
        """A final job: the grid point and one seed, trained on train+val, scored on test."""
        key = ("final", experiment, dataset, method, gp, seed)
        if key not in self._specs:
            layout = self.plan.layout
            point = specs.GridPoint(gp=gp, hp=self.final_hp(experiment, dataset, method, gp))
            out = {
                role: layout.final_file(experiment, dataset, method, gp, seed, name)
                for role, name in dataclasses.asdict(FINAL).items()
            }
            self._specs[key] = specs.FinalSpec(
                run=self.run_settings(experiment, dataset, method),
                point=point,
                seed=int(seed),
                train=layout.data(dataset, "trainval"),
                test=layout.data(dataset, "test"),
                manifest=layout.manifest(dataset),
                **out,
            )
        return self._specs[key]
