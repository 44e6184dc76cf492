"""The authors' numerics, declared (issue 23): studies/vtab1k-fp32.yaml composes studies/vtab1k.yaml's recipe to
plain fp32, eager, torch's AdamW; benchmarks/precision_effect.py plans the bf16-against-fp32 comparison and
prints it beside the authors' rerun spread (run on a GPU; here its dry run and its comparison on fake scores)."""

from __future__ import annotations

import importlib.util
import shlex
import shutil

import pandas as pd
import pytest
from conftest import REPO, report_spec

from peftstudy.io import write_json
from peftstudy.plan import specs
from peftstudy.plan.cost import load_config
from peftstudy.plan.jobs import Plan
from peftstudy.report import render
from peftstudy.report.tables import read_authors
from peftstudy.train.engine import Recipe, bf16_on

spec = importlib.util.spec_from_file_location("precision_effect", REPO / "benchmarks/precision_effect.py")
precision_effect = importlib.util.module_from_spec(spec)
spec.loader.exec_module(precision_effect)

FAST, EXACT = "studies/vtab1k.yaml", "studies/vtab1k-fp32.yaml"


@pytest.fixture
def studies(tmp_path, monkeypatch):
    shutil.copytree(REPO / "studies", tmp_path / "studies")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_fp32_overlay_gives_the_authors_numerics_and_changes_nothing_else(studies):
    fast, exact = load_config([FAST]), load_config([FAST, EXACT])
    fast_recipe, exact_recipe = fast["experiments"]["vtab"]["recipe"], exact["experiments"]["vtab"]["recipe"]
    assert (fast_recipe["precision"], fast_recipe["compile"], fast_recipe["fused_adamw"]) == (
        "auto",
        "reduce-overhead",
        True,
    )
    assert (exact_recipe["precision"], exact_recipe["compile"], exact_recipe["fused_adamw"]) == ("fp32", "off", False)
    changed = {k for k in fast_recipe if fast_recipe[k] != exact_recipe[k]}
    assert changed == {"precision", "compile", "fused_adamw"} and exact["study"] == "vtab1k-fp32"
    recipe = Recipe(**exact_recipe)
    assert not bf16_on(recipe, "cuda") and bf16_on(Recipe(**fast_recipe), "cuda")
    Plan.of(exact)  # the composed study passes the config check


def test_the_precision_effect_dry_run_plans_the_fast_finals_and_their_fp32_retraining(studies, capsys):
    fast = Plan.of(load_config([FAST]))
    gp = next(iter(fast.grids["vtab", "lora"]))
    entry = {"gp": gp, "hp": fast.grids["vtab", "lora"][gp], "metric": "val_top1", "score": 1.0, "rule": "max"}
    selected = studies / fast.layout.selected("vtab")
    selected.parent.mkdir(parents=True)
    write_json(selected, {"datasets": {"dtd": {"lora": entry}}}, schema="selected")
    precision_effect.main(["--tasks", "dtd", "--methods", "lora", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == shlex.join(
        ["snakemake", "--configfile", FAST, "--cores", "all", "--", fast.layout.final_record("vtab", "dtd", "lora")]
    )
    command = shlex.split(lines[1])
    assert command[:2] == ["peftstudy", "run"]
    final = specs.from_json(command[2])
    assert isinstance(final, specs.FinalSpec) and final.point.gp == gp
    recipe = final.run.recipe
    assert (recipe["precision"], recipe["compile"], recipe["fused_adamw"]) == ("fp32", "off", False)
    assert final.train == fast.layout.data("dtd", "trainval")  # the fast study's data
    assert final.metrics.startswith("results/vtab1k/precision_effect/dtd/lora/")


def test_the_comparison_prints_each_difference_beside_the_authors_rerun_spread():
    reruns = read_authors(REPO / "report/data/authors_reruns.csv")
    rows = [
        dict(dataset="caltech101", method="lora", gp="aaaaaaaa", seed="42", bf16=90.0, fp32=90.5),
        dict(dataset="caltech101", method="bitfit", gp="bbbbbbbb", seed="42", bf16=89.0, fp32=88.0),
    ]
    frame = precision_effect.compare(rows, reruns)
    assert frame["fp32_minus_bf16"].tolist() == pytest.approx([0.5, -1.0])
    theirs = reruns[(reruns["experiment"] == "default_vtab") & (reruns["dataset"] == "caltech101")]
    bitfit = [float(v) for v in theirs.loc[theirs["method"] == "bitfit", "test_top1"].iloc[0].split()]
    assert (frame.loc[1, "authors_low"], frame.loc[1, "authors_high"]) == (min(bitfit), max(bitfit))
    text = precision_effect.render(frame)
    spread = (frame["authors_high"] - frame["authors_low"]).max()
    assert (
        text.splitlines()[-1]
        == f"largest |fp32 - bf16|: 1.00 points; the authors' reruns of these finals spread up to {spread:.2f} points"
    )


def test_the_report_declares_each_departure_from_the_authors_numerics():
    final = pd.DataFrame(
        {
            "precision": ["bf16", "bf16", "fp32"],
            "compile": ["reduce-overhead", "reduce-overhead", "off"],
            "fused_adamw": [True, True, False],
        }
    )
    assert render.numerics(final) == [
        "bf16 autocast in 2 of 3 final runs",
        "fused AdamW in 2 of 3 final runs",
        "torch.compile in 2 of 3 final runs",
    ]
    authors = final.iloc[2:]
    assert render.numerics(authors) == []


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_page_names_the_departures_and_the_switch_back(tmp_path, precision):
    tables_dir = tmp_path / "tables"
    tables_dir.mkdir()
    fast = precision == "bf16"
    final = {"experiment": "vtab", "dataset": "dtd", "method": "lora", "seed": 42, "status": "ok", "device": "cuda"}
    numerics = {"precision": precision, "compile": "reduce-overhead" if fast else "off", "fused_adamw": fast}
    pd.DataFrame([{**final, "code_version": "v", **numerics}]).to_csv(tables_dir / "final.csv", index=False)
    out = tmp_path / "report"
    render.run(report_spec(tables_dir, out), specs.Options())
    page = (out / "index.html").read_text()
    departures = "bf16 autocast in 1 of 1 final runs; fused AdamW in 1 of 1 final runs; torch.compile in 1 of 1"
    assert (departures in page) == fast and ("<code>studies/vtab1k-fp32.yaml</code>" in page) == fast
    assert ("fp32, eager, torch's AdamW: the authors' numerics" in page) != fast
