"""The selection jobs' specs (``Plan.selection``): one select job per experiment, handed over as a file."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from peftstudy.plan import specs, stage_specs, study
from peftstudy.plan.defaults import DEFAULTS

if TYPE_CHECKING:
    from peftstudy.plan.jobs import Plan


class SelectionJobs:
    """What each experiment's select job is given, and the spec files the plan alone writes (rule spec_file)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        # experiment -> its select spec: the spec_file rule asks for it twice (params and run), the DAG once more.
        self._specs: dict[str, stage_specs.SelectSpec] = {}

    def rule(self, experiment: str) -> dict[str, str]:
        """The experiment's selection rule: its tie-break and its metric (default: DEFAULTS's)."""
        chosen = self.plan.experiments[experiment]["selection"]
        return {"tie_break": chosen["tie_break"], "metric": chosen.get("metric", DEFAULTS["selection_metric"])}

    def select_spec(self, experiment: str) -> stage_specs.SelectSpec:
        """A select job: each method's grid (its points' settings, in grid order: ties), each dataset's tuning
        sets, the points per tune job (which job holds which point), the tie-break and the metric, and every tune
        job's file in the plan's order."""
        if experiment not in self._specs:
            plan = self.plan
            exp, rule = plan.experiments[experiment], self.rule(experiment)
            self._specs[experiment] = stage_specs.SelectSpec(
                grids={
                    m: tuple(specs.GridPoint(gp=gp, hp=hp) for gp, hp in plan.grids[experiment, m].items())
                    for m in exp["methods"]
                },
                datasets={d: tuple(plan.train.tuning_sets(d)) for d in exp["datasets"]},
                runs_per_job=study.runs_per_job(exp, "tune"),
                tie_break=rule["tie_break"],
                metric=rule["metric"],
                metrics=tuple(plan.tune_metrics(experiment)),
                selected=plan.layout.selected(experiment),
                summary=plan.layout.selection_file(experiment, "tune.csv"),
            )
        return self._specs[experiment]

    @property
    def file_specs(self) -> dict[str, Callable[[str], specs.Spec]]:
        """The specs handed over as files (`as_file`) that the plan alone makes, by stage: select's, by experiment
        (rule spec_file). The tables' needs every selection made: common.smk makes it (rule tables_spec)."""
        return {"select": self.select_spec}

    def file_spec(self, stage: str, name: str) -> specs.Spec:
        return self.file_specs[stage](name)
