"""A table is one name in plan.stage_specs.TABLES and one builder registered under it (report.tables.builds): the plan
declares its file (the tables rule's output, the report's copy), the tables stage writes it, the page shows it
under its title; and every table the page and the notebook read by name is one of the registry's."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from conftest import REPO, report_spec, tiny_config

from peftstudy.plan import specs, stage_specs
from peftstudy.plan.jobs import Plan
from peftstudy.report import render, tables


@pytest.fixture
def toy_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A study whose only table is `toy` (the authors' copies left out), built from the manifests the spec lists."""
    monkeypatch.setattr(stage_specs, "TABLES", {"toy": "Toy: one row per dataset"})
    monkeypatch.setattr(stage_specs, "AUTHORS", ())
    monkeypatch.setattr(tables, "BUILDERS", {})
    tables.builds("toy")(lambda sources: pd.DataFrame({"manifest": list(sources.spec.manifests)}))


@pytest.mark.usefixtures("toy_table")
def test_a_new_table_is_one_name_and_one_builder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = Plan.of(tiny_config())
    csv = plan.layout.table("toy")
    spec = plan.report.tables_spec({}, [], lambda *run: None)
    assert spec.outputs() == {"tables": [csv]} == {"tables": list(plan.report.tables().values())}
    copies = plan.report.report_spec().outputs()["copies"]
    assert copies == [plan.layout.report_file("tables/toy.csv")]
    tables.run(spec, specs.Options())
    assert pd.read_csv(csv)["manifest"].tolist() == [plan.layout.manifest(d) for d in plan.report.report_datasets()]
    render.run(report_spec(tmp_path / "results/tiny/tables", tmp_path / "report"), specs.Options())
    page = (tmp_path / "report/index.html").read_text()
    assert '<h2 id="toy">Toy: one row per dataset</h2>' in page and "results/tiny/data/digits/manifest.json" in page
    assert (tmp_path / "report/tables/toy.csv").read_text() == (tmp_path / csv).read_text()


@pytest.mark.usefixtures("toy_table")
def test_a_table_without_its_builder_or_a_builder_without_its_name_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"tables \['other'\] are not in peftstudy.plan.stage_specs.TABLES"):
        tables.builds("other")(lambda sources: pd.DataFrame())
    monkeypatch.setitem(stage_specs.TABLES, "unbuilt", "")
    monkeypatch.chdir(tmp_path)
    spec = Plan.of(tiny_config()).report.tables_spec({}, [], lambda *run: None)
    with pytest.raises(ValueError, match=r"tables \['unbuilt'\] of peftstudy.plan.stage_specs.TABLES have no builder"):
        tables.run(spec, specs.Options())


def test_every_table_has_its_builder_and_the_rules_take_their_files_from_the_plan():
    assert set(tables.BUILDERS) == set(stage_specs.TABLES)
    rules = (REPO / "workflow/rules/report.smk").read_text()
    assert "for path in PLAN.report.tables().values()" in rules  # the tables rule's outputs
    assert 'copies=PLAN.report.report_spec().outputs()["copies"]' in rules  # the report's


def test_the_page_and_the_notebook_read_only_tables_of_the_registry():
    """They name tables by string: each name must be one the tables stage writes."""
    known = {*stage_specs.TABLES, *(f"authors_{name}" for name in stage_specs.AUTHORS)}
    page = (REPO / "src/peftstudy/report/render.py").read_text()
    read = re.findall(r'table\(\s*frames,\s*"(\w+)"', page) + re.findall(r'frames(?:\.get\(|\[)"(\w+)"', page)
    authors = re.search(r'f"authors_\{name\}".*? for name in \(([^)]*)\)', page)
    read += [f"authors_{name}" for name in re.findall(r'"(\w+)"', authors[1])]
    cells = json.loads((REPO / "report/notebooks/figures.ipynb").read_text())["cells"]
    notebook = re.findall(r'\bread\("(\w+)"', "".join("".join(cell["source"]) for cell in cells))
    assert len(read) > 10 and len(notebook) > 5
    assert sorted(set(read + notebook) - known) == []
