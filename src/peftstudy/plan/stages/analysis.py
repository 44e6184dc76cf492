"""The analysis jobs' specs (`Plan.analysis`): collect, ensemble and robustness.

Which finals a job reads is known once its experiment's selection checkpoint ran: the caller (common.smk) hands
over `selected_gp`, the grid point select chose for an (experiment, dataset, method), None where every point
diverged, and each spec names those finals' files (specs.FINAL) so that Snakemake knows them as inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from peftstudy.plan import specs, stage_specs
from peftstudy.plan.defaults import DEFAULTS
from peftstudy.plan.specs import FINAL

if TYPE_CHECKING:
    from peftstudy.plan.jobs import Plan

# (experiment, dataset, method) -> the grid point its selection chose, None when every point diverged.
SelectedGp = Callable[[str, str, str], str | None]
# The analyses run per (experiment, dataset) that compare its methods (none where an experiment has one method): each
# output role of their spec is a file <role>.json of Layout.analysis_file, read by the tables as that kind.
PER_DATASET: tuple[type[specs.Spec], ...] = (stage_specs.EnsembleSpec,)


class AnalysisJobs:
    """What the collect, ensemble and robustness jobs are given."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def collect_spec(
        self, experiment: str, dataset: str, method: str, choice: Mapping[str, Any], finals: Iterable[str]
    ) -> stage_specs.CollectSpec:
        """A collect job: its own entry of the experiment's selected.json and the selected finals' files (known once
        the selection checkpoint ran, so common.smk resolves them); its spec names their metrics."""
        metrics = tuple(path for path in finals if os.path.basename(path) == FINAL.metrics)
        record = self.plan.layout.final_record(experiment, dataset, method)
        return stage_specs.CollectSpec(
            experiment=experiment, dataset=dataset, method=method, choice=choice, metrics=metrics, record=record
        )

    def selected_files(
        self, experiment: str, dataset: str, method: str, role: str, selected_gp: SelectedGp
    ) -> tuple[str, ...]:
        """The file of `role` (a specs.FinalFiles field) of each seed's final of the selected grid point, in the
        order its record lists them (by seed); none when every grid point diverged."""
        gp = selected_gp(experiment, dataset, method)
        if gp is None:
            return ()
        seeds = sorted(self.plan.experiments[experiment]["seeds"])
        name = getattr(FINAL, role)
        return tuple(self.plan.layout.final_file(experiment, dataset, method, gp, seed, name) for seed in seeds)

    def ensemble_spec(self, experiment: str, dataset: str, selected_gp: SelectedGp) -> stage_specs.EnsembleSpec:
        """An ensemble job: every method's final record on the dataset and its finals' logits, the methods
        ensembled, K."""
        methods = self.plan.experiments[experiment]["methods"]
        return stage_specs.EnsembleSpec(
            finals=tuple(self.plan.layout.final_record(experiment, dataset, m) for m in methods),
            logits=tuple(
                path for m in methods for path in self.selected_files(experiment, dataset, m, "logits", selected_gp)
            ),
            methods=tuple(self.analysis_methods(experiment)),
            confident_k=self.confident_k(),
            ensembles=self.plan.layout.analysis_file(experiment, dataset, "ensembles.json"),
            agreement=self.plan.layout.analysis_file(experiment, dataset, "agreement.json"),
        )

    def analysis_methods(self, experiment: str) -> list[str]:
        """The methods whose pairs and triples are ensembled: analysis.methods, else all."""
        chosen = self.plan.config.get("analysis", {}).get("methods", {})
        return chosen.get(experiment, self.plan.experiments[experiment]["methods"])

    def confident_k(self) -> float:
        return self.plan.config.get("analysis", {}).get("confident_k", DEFAULTS["confident_k"])

    def robustness_sets(self) -> list[str]:
        """The robustness test sets: the in-distribution one first, then the shifted ones."""
        rob = self.plan.robustness
        return [rob["dataset"], *rob["ood"]] if rob else []

    def robustness_experiment(self) -> str | None:
        return self.plan.robustness["experiment"] if self.plan.robustness else None

    def robustness_spec(self, method: str, selected_gp: SelectedGp) -> stage_specs.RobustnessSpec:
        """A robustness job: the method's final record on the in-distribution dataset and its finals' metrics and
        weights, the backbone, each test set (the in-distribution one, the shifted ones), the WiSE mixing
        coefficients."""
        rob, layout = self.plan.robustness, self.plan.layout
        in_distribution, *shifted = (
            stage_specs.EvalSet(name=name, test=layout.data(name, "test")) for name in self.robustness_sets()
        )
        run = (rob["experiment"], rob["dataset"], method)
        return stage_specs.RobustnessSpec(
            method=method,
            backbone=self.plan.train.backbone(rob["experiment"]),
            final=layout.final_record(*run),
            metrics=self.selected_files(*run, "metrics", selected_gp),
            peft=self.selected_files(*run, "peft", selected_gp),
            in_distribution=in_distribution,
            shifted=tuple(shifted),
            alphas=tuple(rob["alphas"]),
            class_subsets=self.class_subsets(),
            device=self.plan.config["device"],
            ood=layout.robustness_file(method, "ood.json"),
            wise=layout.robustness_file(method, "wise.json"),
        )

    def class_subsets(self) -> dict[str, Any]:
        """The robustness test sets that cover part of the label space, with their classes (or mask's name)."""
        datasets = self.plan.datasets
        return {n: datasets[n]["class_subset"] for n in self.robustness_sets() if "class_subset" in datasets[n]}

    def analysis_outputs(self) -> list[dict[str, str]]:
        """Every per-dataset analysis file (PER_DATASET) with what it is ({experiment, dataset, kind, path}: the
        tables read it as given, never from its path)."""
        return [
            {
                "experiment": name,
                "dataset": dataset,
                "kind": kind,
                "path": self.plan.layout.analysis_file(name, dataset, f"{kind}.json"),
            }
            for name, exp in self.plan.experiments.items()
            if len(exp["methods"]) > 1
            for dataset in exp["datasets"]
            for analysis in PER_DATASET
            for kind in specs.output_roles(analysis)
        ]

    def robustness_outputs(self) -> list[dict[str, str]]:
        """Each robustness job's files with what they are ({method, kind, path}; the kind is the spec's output
        role, and its file's schema): what the tables read."""
        rob = self.plan.robustness
        methods = self.plan.experiments[rob["experiment"]]["methods"] if rob else []
        return [
            {"method": m, "kind": role, "path": self.plan.layout.robustness_file(m, f"{role}.json")}
            for m in methods
            for role in specs.output_roles(stage_specs.RobustnessSpec)
        ]
