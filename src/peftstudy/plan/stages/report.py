"""The report's jobs' specs (`Plan.report`): the tables, from every result file, and the page over them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from peftstudy.plan import stage_specs, study
from peftstudy.plan.defaults import DEFAULTS

if TYPE_CHECKING:
    from peftstudy.plan.jobs import Plan
    from peftstudy.plan.stages.analysis import SelectedGp


class ReportJobs:
    """What the tables and report jobs are given."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def report_datasets(self) -> list[str]:
        """Datasets the study trains or tests on (their manifests give the report the split sizes)."""
        names = {d for exp in self.plan.experiments.values() for d in exp["datasets"]}
        names |= set(self.plan.robustness["ood"]) if self.plan.robustness else set()
        return sorted(names)

    def tables(self) -> dict[str, str]:
        """Each table the tables job writes (stage_specs.TABLES, then the authors' copies): name -> its CSV."""
        names = [*stage_specs.TABLES, *(f"authors_{name}" for name in stage_specs.AUTHORS)]
        return {name: self.plan.layout.table(name) for name in names}

    def authors(self) -> list[str]:
        """The authors' numbers, as transcribed in the repository."""
        return [f"report/data/authors_{name}.csv" for name in stage_specs.AUTHORS]

    def tables_spec(
        self, context: Mapping[str, Any], final_benchmarks: Iterable[Mapping[str, str]], selected_gp: SelectedGp
    ) -> stage_specs.TablesSpec:
        """The tables job: `context`, the report's (report_context and the cost estimate, plan.cost's); the selected
        finals' metrics and benchmarks besides every other training job's (known once the selections are made)."""
        plan, layout = self.plan, self.plan.layout
        return stage_specs.TablesSpec(
            study=plan.config["study"],
            config_hash=plan.config_hash,
            context=context,
            tune=tuple(layout.tune_summaries()),
            tune_metrics=tuple(path for experiment in plan.experiments for path in plan.tune_metrics(experiment)),
            finals=tuple(layout.final_records()),
            final_metrics=tuple(
                path for run in layout.runs() for path in plan.analysis.selected_files(*run, "metrics", selected_gp)
            ),
            analysis=tuple(plan.analysis.analysis_outputs()),
            robustness=tuple(plan.analysis.robustness_outputs()),
            manifests=tuple(layout.manifest(d) for d in self.report_datasets()),
            benchmarks=(*self.benchmarks(), *final_benchmarks),
            authors=tuple(self.authors()),
            tables=self.tables(),
        )

    def benchmarks(self) -> list[dict[str, str]]:
        """The benchmarks of every training job known before selection (the finals' depend on it)."""
        return [*self.plan.layout.tune_benchmarks(), *self.plan.layout.other_benchmarks()]

    def report_context(self) -> dict[str, Any]:
        return study.report_context(self.plan.config, self.plan.grids)

    def report_spec(self) -> stage_specs.ReportSpec:
        """The report job: the figures notebook and the page's template over the tables, copied beside the page."""
        tables = self.tables()
        return stage_specs.ReportSpec(
            tables=os.path.dirname(next(iter(tables.values()))),
            csvs=tables,
            notebook="report/notebooks/figures.ipynb",
            template="report/templates/index.html.j2",
            tolerance=self.report_tolerance(),
            html=self.plan.layout.report(),
            executed=self.plan.layout.report_file("figures.ipynb"),
            copies={name: self.plan.layout.report_file(f"tables/{name}.csv") for name in tables},
        )

    def report_tolerance(self) -> float:
        return self.plan.config.get("report", {}).get("tolerance", DEFAULTS["report_tolerance"])
