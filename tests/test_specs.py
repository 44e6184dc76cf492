"""A job is a spec (plan.specs): what the plan hands a stage reads back as itself, checked against the same
dataclasses, with errors naming the key path; the files a spec names are its rule's inputs and outputs."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import tiny_config

from peftstudy.plan import specs, stage_specs
from peftstudy.plan.jobs import Plan


def tune_spec() -> specs.TuneSpec:
    backbone = specs.Backbone(arch="vit", weights="w.safetensors", sha256=None, keep_head=False, head="head.st")
    run = specs.RunSettings(
        experiment="vtab", dataset="count", method="lora", recipe={"epochs": 1}, backbone=backbone, device="cpu"
    )
    points = (specs.GridPoint(gp="0000000a", hp={"r": 2, "lr": 0.001}), specs.GridPoint(gp="0000000b", hp={}))
    return specs.TuneSpec(
        run=run, points=points, seed=0, train="t.npz", val="v.npz", manifest="m.json", metrics="out/metrics.json"
    )


def test_a_spec_reads_back_as_itself_from_canonical_json():
    spec = tune_spec()
    text = spec.to_json()
    assert specs.from_json(text) == spec
    # Canonical: keys sorted at every level, no spaces; equal specs, equal text (the rule's params value).
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert '"hp":{"lr":0.001,"r":2}' in text and json.loads(text)["stage"] == "tune"


def test_the_files_a_spec_names_are_its_inputs_and_outputs_by_role():
    spec = tune_spec()
    assert spec.inputs() == {
        "train": "t.npz",
        "val": "v.npz",
        "manifest": "m.json",
        "weights": "w.safetensors",
        "head": "head.st",
    }
    assert spec.outputs() == {"metrics": "out/metrics.json"}
    no_head = dataclasses.replace(spec.run.backbone, head=None)
    assert "head" not in dataclasses.replace(spec, run=dataclasses.replace(spec.run, backbone=no_head)).inputs()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["run"]["backbone"].update(sha256=3),
            r"tune\.run\.backbone\.sha256: expected str or null, got int 3",
        ),
        (lambda d: d["run"].pop("method"), r"tune\.run: missing key 'method' \(str\)"),
        (
            lambda d: d["points"][1].update(lr=0.1),
            r"tune\.points\[1\]: unknown key\(s\) \['lr'\]; GridPoint has \['gp', 'hp'\]",
        ),
        (lambda d: d.update(seed=True), r"tune\.seed: expected int, got bool"),
        (lambda d: d.update(points={"gp": "x"}), r"tune\.points: expected a list, got dict"),
        (lambda d: d["run"].update(recipe=[1]), r"tune\.run\.recipe: expected an object, got list"),
        (lambda d: d.update(stage="train"), r"no stage 'train': the spec's stage is one of \[.*'final'.*'tune'"),
    ],
)
def test_a_spec_that_does_not_fit_its_dataclass_is_refused_naming_the_key(change, message):
    data = json.loads(tune_spec().to_json())
    change(data)
    with pytest.raises(specs.SpecError, match=message):
        specs.from_json(json.dumps(data))


def test_a_spec_too_long_for_one_argument_is_refused_at_plan_time():
    points = tuple(specs.GridPoint(gp=f"{i:08x}", hp={"lr": 0.001 * i}) for i in range(5000))
    with pytest.raises(specs.SpecError, match=r"the tune job's spec is \d+ bytes, over the 100000"):
        dataclasses.replace(tune_spec(), points=points).to_json()


def test_the_plan_s_training_specs_name_the_files_of_their_rules():
    """The tune and final rules' outputs are their layout patterns; the specs name the same files, and the
    backbone's weights are an input of every training job."""
    plan = Plan.of(tiny_config())
    layout = plan.layout
    experiment, dataset, method = next(iter(layout.runs()))
    pack, gps = next(iter(layout.tune_jobs[experiment, method].items()))
    tune = plan.train.tune_spec(experiment, dataset, method, pack)
    assert tune.outputs() == {"metrics": layout.tune_file(experiment, dataset, method, pack, "metrics.json")}
    assert [p.gp for p in tune.points] == gps and tune.seed == plan.config["seed"]
    assert tune.inputs()["val"] == layout.data(dataset, "val") and "test" not in tune.inputs()
    final = plan.train.final_spec(experiment, dataset, method, gps[0], "7")
    name = dict(metrics="metrics.json", logits="logits.npz", peft="peft.safetensors")
    assert final.outputs() == {
        k: layout.final_file(experiment, dataset, method, gps[0], "7", v) for k, v in name.items()
    }
    assert (
        final.seed == 7
        and final.point == tune.points[0]
        and final.inputs()["train"] == layout.data(dataset, "trainval")
    )
    assert tune.inputs()["weights"] == final.inputs()["weights"] == plan.train.backbone_weights(experiment)


def test_a_robustness_spec_names_each_test_set_in_order_and_reads_its_split():
    """The in-distribution set first, then the shifted ones, each by name (no order-dependent NAME=path list); each
    set's test split is an input under its name, besides the final record and the backbone's files."""
    config = tiny_config()
    plan = Plan.of(config)
    rob = config["robustness"]
    spec = plan.analysis.robustness_spec("bitfit", lambda *run: "0123abcd")
    assert spec.in_distribution.name == rob["dataset"] and [s.name for s in spec.shifted] == list(rob["ood"])
    names = [rob["dataset"], *rob["ood"]]
    assert {name: spec.inputs()[name] for name in names} == {name: plan.layout.data(name, "test") for name in names}
    assert spec.inputs()["final"] == plan.layout.final_record(rob["experiment"], rob["dataset"], "bitfit")
    assert spec.outputs() == {k: plan.layout.robustness_file("bitfit", f"{k}.json") for k in ("ood", "wise")}


def selected_files(plan: Plan, run: tuple[str, str, str], gp: str, name: str) -> list[str]:
    seeds = plan.experiments[run[0]]["seeds"]
    return [plan.layout.final_file(*run, gp, seed, name) for seed in sorted(seeds)]


def test_the_analysis_specs_name_each_selected_final_s_files_as_inputs():
    """Which finals an analysis reads is known once its selection is made: the ensemble spec names each method's
    finals' logits, the robustness spec its finals' metrics and weights, the tables spec every final's metrics,
    so Snakemake knows them as inputs (a deleted one is made again); a method whose every point diverged has none."""
    plan = Plan.of(tiny_config())
    chosen = {"linear": "0000000a", "lora": None}  # lora: every grid point diverged

    def selected_gp(experiment: str, dataset: str, method: str) -> str | None:
        return chosen.get(method, "0000000b")

    ensemble = plan.analysis.ensemble_spec("vtab", "count", selected_gp)
    assert ensemble.inputs()["logits"] == selected_files(plan, ("vtab", "count", "linear"), "0000000a", "logits.npz")
    assert ensemble.inputs()["finals"] == [plan.layout.final_record("vtab", "count", m) for m in ("linear", "lora")]
    rob = plan.robustness
    robustness = plan.analysis.robustness_spec("bitfit", selected_gp)
    run = (rob["experiment"], rob["dataset"], "bitfit")
    assert robustness.inputs()["peft"] == selected_files(plan, run, "0000000b", "peft.safetensors")
    assert robustness.inputs()["metrics"] == selected_files(plan, run, "0000000b", "metrics.json")
    assert "peft" not in plan.analysis.robustness_spec("bitfit", lambda *run: None).inputs()
    tables = plan.report.tables_spec({}, [], selected_gp)
    expected = [
        p
        for r in plan.layout.runs()
        if selected_gp(*r)
        for p in selected_files(plan, r, selected_gp(*r), "metrics.json")
    ]
    assert tables.inputs()["final_metrics"] == expected
    assert [r["path"] for r in tables.robustness] == tables.inputs()["robustness"]
    assert {(r["kind"], r["path"].rsplit("/", 1)[1]) for r in tables.robustness} == {
        ("ood", "ood.json"),
        ("wise", "wise.json"),
    }


def test_a_stage_reads_only_the_finals_its_spec_names():
    """A final record listing a run the spec does not name (collected after the spec was made) is refused, naming
    the file; so is a spec naming a file no record lists."""
    record = {"runs": [{"seed": 0, "dir": "r/final/gp/seed0"}, {"seed": 1, "dir": "r/final/gp/seed1"}]}
    named = ("r/final/gp/seed0/logits.npz", "r/final/gp/seed1/logits.npz")
    assert [path for _, _, path in stage_specs.final_runs([record], "logits", named, "ensemble")] == list(named)
    with pytest.raises(specs.SpecError, match=r"not named by the spec: \['r/final/gp/seed1/logits.npz'\]"):
        stage_specs.final_runs([record], "logits", named[:1], "ensemble")
    with pytest.raises(specs.SpecError, match=r"not in a record: \['x/logits.npz'\]"):
        stage_specs.final_runs([record], "logits", (*named, "x/logits.npz"), "ensemble")


def test_a_select_spec_goes_as_a_file_whose_digest_follows_the_grid(tmp_path):
    """select's spec is written by rule spec_file (`as_file`): the file reads back as the plan's spec, and its digest
    (the rule's param) changes with a grid point, so the file is rewritten and select reruns."""
    config = tiny_config()
    plan = Plan.of(config)
    spec = plan.selection.file_spec("select", "vtab")
    assert spec == plan.selection.select_spec("vtab") and type(spec).as_file and not specs.TuneSpec.as_file
    path = tmp_path / "select.json"
    specs.write(path, spec)
    assert specs.from_json(path.read_text()) == spec
    assert spec.inputs() == {"metrics": plan.tune_metrics("vtab")}
    config["experiments"]["vtab"]["grid"]["lr"] = [*config["experiments"]["vtab"]["grid"]["lr"], 0.123]
    assert Plan.of(config).selection.file_spec("select", "vtab").digest() != spec.digest()
