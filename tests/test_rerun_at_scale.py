"""Rerun only what is stale, on a study of the paper's shape: VTAB-1K's 16 methods with their full grids (516
grid points a task, in dense packs) on two of its tasks, one selection for the experiment. The training commands are the
stand-in of benchmarks/sweep_overhead.py (schema-valid results in milliseconds; `select` and `collect` are the
real ones, so the choices and the DAG behind them are real), the data stage faked as that benchmark fakes it.
The spine's scenarios as tests/test_pipeline.py runs them on the tiny study: nothing to do after a run, a grid
point added, a method's module edited, a final's output deleted. Asserted on the jobs Snakemake ran.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from conftest import REPO, jobs

from peftstudy.plan import study
from peftstudy.select import chosen_gp

sys.path.insert(0, str(REPO / "benchmarks"))
from sweep_overhead import SNAKEMAKE, Size, load_config, set_up

pytestmark = pytest.mark.slow

TASKS = 2


class Shape(NamedTuple):
    root: Path
    configs: list[Path]
    env: dict[str, str]
    first_run: list[tuple[str, dict[str, str]]]


def snakemake(shape_root: Path, configs: list[Path], env: dict[str, str], *args: str) -> str:
    cmd = [str(SNAKEMAKE), "all", "--cores", "2", "--configfile", *map(str, configs), *args]
    proc = subprocess.run(cmd, cwd=shape_root, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def shape(tmp_path_factory) -> Shape:
    # VTAB-1K's one experiment at its first TASKS tasks, in a scratch copy of the repository.
    prepared = set_up(tmp_path_factory.mktemp("paper-shape"), [REPO / "studies/vtab1k.yaml"], Size(1, TASKS))
    return Shape(
        prepared.root, prepared.configs, prepared.env, jobs(snakemake(prepared.root, prepared.configs, prepared.env))
    )


def config_of(shape: Shape) -> dict:
    return load_config(shape.root, shape.configs)


def run(shape: Shape, *args: str) -> list[tuple[str, dict[str, str]]]:
    return jobs(snakemake(shape.root, shape.configs, shape.env, *args))


def chosen(shape: Shape, dataset: str, method: str) -> str | None:
    return chosen_gp(shape.root / "results/vtab1k/vtab/selected.json", dataset, method)


def test_the_first_run_is_the_whole_study_and_a_second_has_nothing_to_do(shape):
    config = config_of(shape)
    vtab = config["experiments"]["vtab"]
    counts = Counter(rule for rule, _ in shape.first_run)
    packs = study.tune_jobs(config)
    assert counts["tune"] == TASKS * sum(len(packs["vtab", m]) for m in vtab["methods"]) == TASKS * 27
    assert counts["select"] == 1 and counts["final"] == counts["collect"] == TASKS * 16
    assert "Nothing to be done" in snakemake(shape.root, shape.configs, shape.env, "-n")


def test_a_grid_point_added_reruns_only_the_packs_holding_it_and_what_its_choice_changes(shape):
    config = config_of(shape)
    datasets = config["experiments"]["vtab"]["datasets"]
    before = {d: {m: chosen(shape, d, m) for m in config["experiments"]["vtab"]["methods"]} for d in datasets}
    packs_before = study.tune_jobs(config)["vtab", "lora_p_adapter"]
    grown = copy.deepcopy(config)
    grids = grown["experiments"]["vtab"]["method_grids"]
    grids["lora_p_adapter"] = dict(grids["lora_p_adapter"], r=[*grids["lora_p_adapter"]["r"], 3])  # 16 points more
    overlay = shape.root / "grown.yaml"
    overlay.write_text(yaml.safe_dump({"experiments": {"vtab": {"method_grids": grids}}}))
    shape.configs.append(overlay)
    executed = run(shape)
    packs_after = study.tune_jobs(load_config(shape.root, shape.configs))["vtab", "lora_p_adapter"]
    # 96 points in 4 packs, as the 80 before: a pack whose points did not change is not rerun (with product grids
    # a new value of one key lands in most packs; their jobs reuse the points they had: tests/test_resume.py).
    changed_packs = {p for p, gps in packs_after.items() if gps != packs_before.get(p)}
    assert changed_packs
    tunes = {(wc["dataset"], wc["method"], wc["pack"]) for rule, wc in executed if rule == "tune"}
    assert tunes == {(d, "lora_p_adapter", p) for d in datasets for p in changed_packs}
    assert [wc for rule, wc in executed if rule == "select"] == [{"experiment": "vtab"}]
    after = {d: {m: chosen(shape, d, m) for m in before[d]} for d in datasets}
    changed = {(d, m) for d in datasets for m in before[d] if after[d][m] != before[d][m]}
    assert {m for _, m in changed} <= {"lora_p_adapter"}
    assert {(wc["dataset"], wc["method"]) for rule, wc in executed if rule == "final"} == changed
    assert {(wc["dataset"], wc["method"]) for rule, wc in executed if rule == "collect"} == changed
    allowed = {"tune", "spec_file", "select", "final", "collect", "ensemble", "tables_spec", "tables", "report", "all"}
    assert {rule for rule, _ in executed} <= allowed


def test_an_edited_method_module_reruns_that_method_alone(shape):
    module = shape.root / "src/peftstudy/methods/bitfit.py"
    # A code edit (a comment or docstring edit changes no result and reruns nothing: tests/test_depends.py).
    module.write_text(module.read_text() + "\nEDITED = True\n")
    executed = run(shape)
    trained = {(rule, wc["method"]) for rule, wc in executed if rule in ("tune", "final", "collect")}
    assert trained == {(rule, "bitfit") for rule in ("tune", "final", "collect")}
    assert Counter(rule for rule, _ in executed if rule in ("tune", "final", "collect")) == {
        "tune": TASKS,
        "final": TASKS,
        "collect": TASKS,
    }
    assert Counter(rule for rule, _ in executed)["select"] == 1


def test_a_deleted_final_output_is_rebuilt_alone(shape):
    dataset = config_of(shape)["experiments"]["vtab"]["datasets"][0]
    gp = chosen(shape, dataset, "ssf")
    target = shape.root / f"results/vtab1k/vtab/{dataset}/ssf/final/{gp}/seed42/logits.npz"
    target.unlink()
    executed = run(shape)
    assert [(rule, wc) for rule, wc in executed if rule in ("tune", "select", "final")] == [
        ("final", {"experiment": "vtab", "dataset": dataset, "method": "ssf", "gp": gp, "seed": "42"})
    ]
    assert target.exists()
