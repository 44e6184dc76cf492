"""The whole DAG on a tiny study, from a clean directory to the report, and what reruns when something changes.

Rerun behaviour is asserted on the jobs Snakemake reports (its plan or its run log), never on timestamps.
One workflow copy is shared by the tests of this module; its fixture makes the first run, from a clean directory
to the report. Run in order, each scenario starts from the state the previous one left, as a user's edits would;
each also passes alone (`-k editing`), from the first run's state.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from conftest import Workflow, copy_repo, jobs, tiny_config

from peftstudy.io import read_json
from peftstudy.select import chosen_gp

pytestmark = pytest.mark.slow

RESULTS = "results/tiny"


def run(wf, config, *extra):
    proc = wf.snakemake("--configfile", str(config), *extra)
    return jobs(proc.stdout + proc.stderr)


class Tiny(NamedTuple):
    wf: Workflow
    config: Path
    first_run: list[tuple[str, dict[str, str]]]  # the jobs of the run from a clean directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    """The tiny study's workflow copy after its first run, which every scenario starts from."""
    wf = copy_repo(tmp_path_factory.mktemp("tiny"))
    config = wf.config(tiny_config(), "tiny.yaml")
    return Tiny(wf, config, run(wf, config))


def counts(executed):
    return Counter(rule for rule, _ in executed if rule != "all")


def test_full_dag_from_clean_directory_to_report(tiny):
    wf, executed = tiny.wf, tiny.first_run
    c = counts(executed)
    # VTAB, one run per job: 2 tasks x (linear 1 + lora 2 grid points) = 6 tune jobs; 4 finals (one seed).
    # Robustness, packed: per method one tune job (2 drop-path points); a final job per seed (2).
    tunes = [wc for rule, wc in executed if rule == "tune"]
    assert Counter(wc["experiment"] for wc in tunes) == {"vtab": 6, "robustness": 2}
    assert all(wc["pack"].startswith("pack") == (wc["experiment"] == "robustness") for wc in tunes)
    assert Counter(wc["experiment"] for rule, wc in executed if rule == "final") == {"vtab": 4, "robustness": 4}
    assert c["select"] == 2 and c["collect"] == 6  # one selection per experiment
    assert c["ensemble"] == 3 and c["robustness"] == 2 and c["report"] == 1
    root = wf.root / RESULTS
    html = (root / "report/index.html").read_text()
    for expected in ("Test accuracy", "vtab", "count", "digits", "lora", "WiSE", "data:image/png;base64,"):
        assert expected in html
    # Every result file is valid against its schema; a tune job's file holds each of its grid points' results.
    tune = [p for path in sorted(root.glob("*/*/*/tune/*/metrics.json")) for p in read_json(path, "tune")["points"]]
    finals = [read_json(path, schema="metrics") for path in sorted(root.glob("*/*/*/final/*/seed*/metrics.json"))]
    assert len(tune) == 6 + 4 and len(finals) == 4 + 4  # VTAB and robustness
    for m in tune + finals:
        assert m["status"] == "ok" and m["provenance"]["config_hash"]
    for path in root.glob("*/selected.json"):
        read_json(path, schema="selected")
    for schema in ("ensembles", "agreement"):
        for path in root.glob(f"*/*/analysis/{schema}.json"):
            read_json(path, schema=schema)
    for method in ("linear", "bitfit"):
        wise = read_json(root / f"robustness/{method}/wise.json", schema="wise")
        curves = {v: [p for p in wise["points"] if p["variant"] == v] for v in ("wise", "head_only")}
        assert [p["alpha"] for p in curves["wise"]] == [p["alpha"] for p in curves["head_only"]] == [0.0, 0.5, 1.0]
        # At alpha = 1 both variants are the fine-tuned model.
        assert curves["wise"][-1]["id"] == curves["head_only"][-1]["id"]
        if method == "linear":  # only the head is trained: the variants coincide
            scores = {v: [{k: x for k, x in p.items() if k != "variant"} for p in c] for v, c in curves.items()}
            assert scores["wise"] == scores["head_only"]
    # Both methods start from the same zero-shot model, so their alpha = 0 points coincide.
    zero = {
        m: read_json(root / f"robustness/{m}/wise.json", schema="wise")["points"][0]["id"] for m in ("linear", "bitfit")
    }
    assert zero["linear"] == zero["bitfit"]


def test_second_run_has_nothing_to_do(tiny):
    wf, config, _ = tiny
    proc = wf.snakemake("--configfile", str(config), "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert counts(run(wf, config)) == Counter()


def planned_inputs(wf, config, *args) -> dict[str, list[str]]:
    """rule -> every input path of the jobs a dry run plans."""
    proc = wf.snakemake("--configfile", str(config), "-n", *args)
    inputs_by_rule: dict[str, list[str]] = {}
    rule = None
    for line in (proc.stdout + proc.stderr).splitlines():
        line = line.strip()
        if line.startswith(("rule ", "checkpoint ", "localrule ")) and line.endswith(":"):
            rule = line.split()[1].rstrip(":")
        elif line.startswith("input:") and rule:
            inputs_by_rule.setdefault(rule, []).extend(p.strip() for p in line[6:].split(","))
    return inputs_by_rule


def test_no_tune_or_select_job_reads_the_test_split(tiny):
    wf, config, _ = tiny
    inputs_by_rule = planned_inputs(wf, config, "--forceall")
    assert inputs_by_rule["tune"] and inputs_by_rule["select"]
    for rule in ("tune", "select"):
        assert not [p for p in inputs_by_rule[rule] if p.endswith("test.npz")], rule
    # The finals hide behind the selection checkpoint in a fresh plan; with selections made they show.
    assert any(p.endswith("test.npz") for p in planned_inputs(wf, config, "--forcerun", "final")["final"])


def test_adding_a_grid_point_reruns_only_its_tune_select_and_dependants(tiny):
    wf, config, _ = tiny
    root = wf.root / RESULTS
    before = {d: chosen_gp(root / "vtab/selected.json", d, "lora") for d in ("count", "digits")}
    cfg = yaml.safe_load(config.read_text())
    cfg["experiments"]["vtab"]["method_grids"]["lora"]["r"].append(1)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    executed = run(wf, config)
    tunes = [wc for rule, wc in executed if rule == "tune"]
    assert len(tunes) == 2 and {wc["method"] for wc in tunes} == {"lora"}
    assert {wc["dataset"] for wc in tunes} == {"count", "digits"}
    selects = [wc for rule, wc in executed if rule == "select"]
    assert selects == [{"experiment": "vtab"}]
    after = {d: chosen_gp(root / "vtab/selected.json", d, "lora") for d in ("count", "digits")}
    changed = {d for d in after if after[d] != before[d]}
    finals = [wc for rule, wc in executed if rule == "final"]
    assert {(wc["dataset"], wc["gp"]) for wc in finals} == {(d, after[d]) for d in changed}
    # Only LoRA's records, where its choice changed: the other entries of the same selected.json are as they were.
    collects = {(wc["dataset"], wc["method"]) for rule, wc in executed if rule == "collect"}
    assert collects == {(d, "lora") for d in changed}
    allowed = {"tune", "spec_file", "select", "final", "collect", "ensemble", "tables_spec", "tables", "report"}
    assert set(counts(executed)) <= allowed
    assert not [wc for rule, wc in executed if rule in ("tune", "final") and wc.get("method") != "lora"]


def test_editing_a_method_module_reruns_only_that_method(tiny):
    wf, config, _ = tiny
    module = wf.root / "src/peftstudy/methods/bitfit.py"
    # A code edit (a comment or docstring edit changes no result and reruns nothing: tests/test_depends.py).
    module.write_text(module.read_text() + "\nEDITED = True\n")
    executed = run(wf, config)
    stages = ("tune", "final", "collect")
    trained = {(rule, wc["method"]) for rule, wc in executed if rule in stages}
    assert trained == {(r, "bitfit") for r in stages}
    # The one selection holding bitfit's choices reran (every choice there is remade, the others the same).
    assert [wc for rule, wc in executed if rule == "select"] == [{"experiment": "robustness"}]
    assert [wc for rule, wc in executed if rule == "robustness"] == [{"method": "bitfit"}]
    assert {wc["experiment"] for rule, wc in executed if rule == "tune"} == {"robustness"}
    assert "ensemble" in counts(executed) and "report" in counts(executed)


def test_a_deleted_final_output_is_rebuilt_alone(tiny):
    wf, config, _ = tiny
    root = wf.root / RESULTS
    gp = chosen_gp(root / "vtab/selected.json", "count", "linear")
    target = root / f"vtab/count/linear/final/{gp}/seed0/logits.npz"
    original = target.read_bytes()
    target.unlink()
    executed = run(wf, config)
    finals = [wc for rule, wc in executed if rule == "final"]
    assert finals == [{"experiment": "vtab", "dataset": "count", "method": "linear", "gp": gp, "seed": "0"}]
    assert not [r for r, _ in executed if r in ("tune", "select", "source_local", "prepare")]
    # Training is deterministic on the CPU: the rebuilt logits are the same bytes.
    assert target.read_bytes() == original


def test_a_deleted_output_of_a_packed_job_reruns_its_pack_with_the_same_results(tiny):
    wf, config, _ = tiny
    root = wf.root / RESULTS
    target = root / "robustness/shapes/linear/tune/pack1-0/metrics.json"

    def results() -> list[dict]:
        """Each point's result, but for its wall time and provenance (a run's clock, not its result)."""
        points = json.loads(target.read_text())["points"]
        return [{k: v for k, v in p.items() if k not in ("wall_seconds", "provenance")} for p in points]

    before = results()
    target.unlink()
    # A tune result is an intermediate: Snakemake remakes a deleted one when it is asked for by name.
    proc = wf.snakemake(str(target.relative_to(wf.root)), "--configfile", str(config))
    executed = jobs(proc.stdout + proc.stderr)
    assert executed == [
        ("tune", {"experiment": "robustness", "dataset": "shapes", "method": "linear", "pack": "pack1-0"})
    ]
    # Both points of the pack, each as it was (each run reseeds).
    assert results() == before and len(before) == 2


def test_report_tables_are_written_beside_the_page(tiny):
    wf = tiny.wf
    root = wf.root / RESULTS
    results = (root / "report/tables/results.csv").read_text().splitlines()
    header = results[0].split(",")
    assert header[:4] == ["experiment", "dataset", "method", "test_top1"]
    assert len(results) == 1 + 2 * 2 + 2  # vtab: 2 tasks x 2 methods; robustness: 1 task x 2 methods
    # The robustness experiment's two seeds give each of its methods a seed-ensemble control.
    seed_ensembles = (root / "tables/seed_ensembles.csv").read_text().splitlines()
    assert len(seed_ensembles) == 1 + 2
    selected = json.loads((root / "vtab/selected.json").read_text())["datasets"]["count"]["lora"]
    assert set(selected) == {"gp", "hp", "metric", "score", "rule"} and selected["metric"] == "val_top1"
    assert Path(root / "report/figures.ipynb").exists()
