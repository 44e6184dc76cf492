"""select refuses tune results that do not cover their grid exactly (issue 23): a point deleted from a pack's
metrics.json, a point of an older grid, a truncated file. Each is named with its file and the fix; nothing is
selected. Fake tune results at the plan's own paths, with the plan's own select arguments: no training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import tiny_config, tune_point

from peftstudy import cli, select
from peftstudy.io import read_json, write_json
from peftstudy.plan import specs, study
from peftstudy.plan.jobs import Plan

EXPERIMENT = "robustness"  # the tiny study's packed experiment: its tune jobs hold two grid points each


@pytest.fixture
def plan(tmp_path, monkeypatch) -> Plan:
    """The tiny study with a third drop-path (so a pack holds one point, another two), run from `tmp_path`."""
    monkeypatch.chdir(tmp_path)
    config = tiny_config()
    config["experiments"][EXPERIMENT]["grid"]["drop_path"] = [0.0, 0.1, 0.2]
    return Plan.of(config)


def write_tune_results(plan: Plan) -> dict[str, list[dict]]:
    """Every tune job's metrics.json of the experiment, each holding exactly its job's points (the last one best)."""
    exp = plan.experiments[EXPERIMENT]
    jobs = {m: plan.layout.tune_jobs[EXPERIMENT, m] for m in exp["methods"]}
    sets = {d: plan.train.tuning_sets(d) for d in exp["datasets"]}
    written = {}
    for path, (tuning_set, method, _, points) in zip(
        plan.tune_metrics(EXPERIMENT), study.selection_jobs(sets, jobs), strict=True
    ):
        grid = plan.grids[EXPERIMENT, method]
        written[path] = [
            tune_point(gp, 50.0 + list(grid).index(gp), hp=grid[gp], dataset=tuning_set, method=method) for gp in points
        ]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"points": written[path]}, schema="tune")
    return written


def run_select(plan: Plan) -> dict:
    """The select job as the rules run it: the plan's spec (its tune files in the plan's order) in a file."""
    spec = dataclasses.replace(plan.selection.select_spec(EXPERIMENT), selected="selected.json", summary="tune.csv")
    specs.write("select.spec.json", spec)
    cli.main(["run", "@select.spec.json"])
    return read_json("selected.json", schema="selected")["datasets"]


def test_complete_results_select_the_best_point_and_a_diverged_one_stays_out(plan):
    written = write_tune_results(plan)
    grid = plan.grids[EXPERIMENT, "bitfit"]
    assert run_select(plan)["shapes"]["bitfit"]["gp"] == list(grid)[-1]
    # The best point diverged: it is present (the grid is covered) but never chosen.
    path = next(p for p, points in written.items() if "/bitfit/" in p and points[-1]["gp"] == list(grid)[-1])
    best = dict(written[path][-1], status="diverged", divergence={"rule": "explosion", "reason": "train loss"})
    write_json(path, {"points": [*written[path][:-1], best]}, schema="tune")
    assert run_select(plan)["shapes"]["bitfit"]["gp"] == list(grid)[-2]


def test_a_point_deleted_from_a_packs_metrics_json_is_named_with_its_file_and_the_fix(plan):
    """Today's failure: select chose among the rest (the choice moved) and exited 0."""
    written = write_tune_results(plan)
    path, points = next((p, points) for p, points in written.items() if "/bitfit/" in p and len(points) == 2)
    write_json(path, {"points": points[:1]}, schema="tune")
    with pytest.raises(select.IncompleteTune) as raised:
        run_select(plan)
    message = str(raised.value)
    gone = points[1]
    assert (
        f"{path} (bitfit on shapes, 2 grid points):\n  missing 1: {gone['gp']} {json.dumps(gone['hp'], sort_keys=True)}"
        in message
    )
    assert "nothing was selected" in message and f"rm {path}, then run snakemake again" in message
    assert f"--forcerun {path}" in message and not Path("selected.json").exists()


def test_a_point_of_an_older_grid_is_named_as_extra_beside_the_point_it_lacks(plan):
    """A pack's file from before the grid changed (kept by --rerun-triggers mtime): its old point is extra."""
    written = write_tune_results(plan)
    path, points = next((p, points) for p, points in written.items() if "/linear/" in p)
    old_hp = dict(points[0]["hp"], drop_path=0.3)
    old = dict(points[0], gp=study.gp_id(old_hp), hp=old_hp)
    write_json(path, {"points": [old, *points[1:]]}, schema="tune")
    with pytest.raises(select.IncompleteTune) as raised:
        run_select(plan)
    message = str(raised.value)
    assert f"  missing 1: {points[0]['gp']} {json.dumps(points[0]['hp'], sort_keys=True)}" in message
    assert f"  extra 1: {old['gp']} {json.dumps(old_hp, sort_keys=True)}" in message
    assert "--rerun-triggers mtime" in message and f"rm {path}" in message


def test_a_truncated_tune_file_is_named_with_the_fix_not_a_bare_json_error(plan):
    written = write_tune_results(plan)
    path = next(iter(written))
    text = Path(path).read_text()
    Path(path).write_text(text[: len(text) // 2])
    with pytest.raises(select.IncompleteTune, match=rf"^{path} is not a readable tune result \(.*\); remake it: rm"):
        run_select(plan)


def test_a_selection_made_before_the_grid_changed_asks_to_select_again(plan):
    """After --rerun-triggers mtime, an edited grid leaves select's output standing: its chosen point, now out of
    the grid, reaches the final's params. The advice was "request only points of the current config"; the user
    requested nothing: the selection is stale."""
    old_hp = {"drop_path": 0.3, "lr": 0.001, "wd": 0.0001}
    old_gp = study.gp_id(old_hp)
    entry = {"gp": old_gp, "hp": old_hp, "metric": "val_top1", "score": 50.0, "rule": "max"}
    Path(plan.layout.selected(EXPERIMENT)).parent.mkdir(parents=True)
    write_json(plan.layout.selected(EXPERIMENT), {"datasets": {"shapes": {"bitfit": entry}}}, schema="selected")
    with pytest.raises(ValueError) as raised:
        plan.train.final_spec(EXPERIMENT, "shapes", "bitfit", old_gp, "0")
    message = str(raised.value)
    assert message.startswith(f"{plan.layout.selected(EXPERIMENT)} chose grid point {old_gp} for bitfit on shapes")
    assert "add --forcerun select (or run without --rerun-triggers mtime)" in message
    # A final asked for by path, of a point no selection chose: the point itself is the mistake.
    with pytest.raises(ValueError, match=r"grid point 0123abcd is not in the grid of bitfit .*points of the current"):
        plan.train.final_spec(EXPERIMENT, "shapes", "bitfit", "0123abcd", "0")
