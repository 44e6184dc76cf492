"""What the probes of issue 18 found: a loss that explodes without going NaN, a grid whose every point
diverged, grid values that fail inside torch, a full disk mid-write, a misspelt config key."""

from __future__ import annotations

import copy
import dataclasses
import errno
import io
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, dependencies, mini_backbone, prepare_mini_task, tiny_config, training_spec

from peftstudy import cli, methods, select
from peftstudy import io as study_io
from peftstudy.io import read_json, write_json
from peftstudy.plan import specs, stage_specs, study
from peftstudy.report import render, tables
from peftstudy.select import choose
from peftstudy.train import resume, runs
from peftstudy.train.engine import Recipe, fit

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


# Divergence


def _fit_linear(lr: float, rule: str):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    recipe = Recipe(epochs=3, batch_size=16, divergence=rule)
    return fit(model, x, y, lr=lr, wd=0.0, recipe=recipe, seed=0, log_every=0)


def test_a_loss_exploding_without_going_non_finite_is_diverged_unless_the_authors_rule_is_asked_for():
    exploded = _fit_linear(lr=10.0, rule="explosion")
    assert torch.isfinite(torch.tensor(exploded.train_loss)) and exploded.train_loss > 10
    assert exploded.diverged
    assert "10 x its start" in exploded.divergence and "ln 3 classes" in exploded.divergence
    authors = _fit_linear(lr=10.0, rule="non_finite")
    assert not authors.diverged and authors.divergence is None
    assert not _fit_linear(lr=0.01, rule="explosion").diverged


@pytest.fixture(scope="module")
def count_task(tmp_path_factory):
    torch.set_num_threads(2)
    return prepare_mini_task(tmp_path_factory.mktemp("count"), "count", ("train", "val"))


def _tune_linear(task: Path, out: Path, lrs: list[float], divergence: str) -> list[dict]:
    points = [{"gp": f"{i:08x}", "hp": {"lr": lr, "wd": 0.0}} for i, lr in enumerate(lrs)]
    recipe = {"epochs": 3, "batch_size": 32, "divergence": divergence}
    spec = training_spec("tune", task, out / divergence, "linear", points, recipe)
    runs.tune(spec, specs.Options(threads=1, concurrent=1))
    return read_json(spec.metrics, schema="tune")["points"]


def test_an_exploded_tune_run_is_recorded_diverged_with_its_rule_and_reason_and_never_selected(count_task, tmp_path):
    """lr 100 on the linear probe: the loss climbs to thousands, finite throughout."""
    sane, exploded = _tune_linear(count_task, tmp_path, [0.001, 100.0], "explosion")
    assert exploded["metrics"]["train_loss"] is not None  # finite: the old rule called it ok
    assert exploded["status"] == "diverged"
    assert exploded["divergence"]["rule"] == "explosion" and "train loss" in exploded["divergence"]["reason"]
    assert sane["status"] == "ok" and sane["divergence"] == {"rule": "explosion", "reason": None}
    assert choose([sane, exploded], [sane["gp"], exploded["gp"]])["gp"] == sane["gp"]
    # The authors' rule, as a switch: the same run counts as ok (and is recorded so).
    _, authors = _tune_linear(count_task, tmp_path, [0.001, 100.0], "non_finite")
    assert authors["status"] == "ok" and authors["divergence"] == {"rule": "non_finite", "reason": None}


# Grid values


def _experiment_config(**changes) -> dict:
    config = copy.deepcopy(CONFIG)
    for path, value in changes.items():
        *parents, key = path.split("__")
        node = config["experiments"]["vtab"]
        for parent in parents:
            node = node[parent]
        node[key] = value
    return config


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"grid__lr": ["fast"]}, "experiments.vtab.grid.lr[0]: 'fast' is not of type 'number'"),
        ({"grid__wd": ["none"]}, "experiments.vtab.grid.wd[0]: 'none' is not of type 'number'"),
        ({"grid__lr": [-0.001]}, "experiments.vtab.grid.lr[0]: -0.001 is less than or equal to the minimum of 0"),
        ({"grid__drop_path": [1.5]}, "experiments.vtab.grid.drop_path[0]: 1.5 is greater than or equal to"),
        ({"method_grids__full__lr": ["1e-3"]}, "experiments.vtab.method_grids.full.lr[0]: '1e-3' is not of type"),
    ],
)
def test_recipe_grid_values_are_typed_and_ranged_by_the_schema(changes, expected):
    with pytest.raises(ValueError) as raised:
        study_io.validate_config(_experiment_config(**changes))
    assert str(raised.value).startswith(f"config: {expected}")


@pytest.mark.parametrize(
    ("method", "hp", "expected"),
    [
        ("lora", {"dropout": "high"}, "lora: dropout must be a number in [0, 1), got 'high'"),
        ("lora", {"variant": "original", "alpha": "x"}, "lora: alpha must be a number > 0, got 'x'"),
        ("rand_h_adapter", {"scale": "big"}, "adapter: scale must be a number > 0, got 'big'"),
        ("adaptformer", {"scale": 0}, "adaptformer: scale must be a number > 0, got 0"),
        ("convpass", {"dropout": 1.0}, "convpass: dropout must be a number in [0, 1), got 1"),
        ("repadapter", {"scale": True}, "repadapter: scale must be a number > 0, got True"),
        ("fact_tt", {"dropout": -0.1}, "fact: dropout must be a number in [0, 1), got -0.1"),
        ("vpt_deep", {"dropout": "0.1"}, "vpt_deep: dropout must be a number in [0, 1), got '0.1'"),
        ("vpt_shallow", {"num_tokens": 2.5}, "vpt_shallow: num_tokens must be a positive integer, got 2.5"),
    ],
)
def test_method_grid_values_fail_at_parse_time_naming_the_key(method, hp, expected):
    config = _experiment_config(methods=[method], method_grids={method: {k: [v] for k, v in hp.items()}})
    study_io.validate_config(config)  # the schema leaves a method's own keys to its Config
    with pytest.raises(study.ConfigError, match=f"experiments.vtab: {method} grid point .*{re.escape(expected)}"):
        study.check(config)


def test_every_method_config_field_is_checked():
    """Each typed field of every method rejects a string: no key reaches torch unchecked."""
    for name in methods.names():
        for field in dataclasses.fields(methods.get(name).config):
            with pytest.raises(ValueError, match=field.name):
                methods.split_hp(name, {field.name: "nonsense"})


def test_a_batch_larger_than_a_synthetic_training_split_fails_at_parse_time():
    config = _experiment_config(recipe=dict(CONFIG["experiments"]["vtab"]["recipe"], batch_size=400))
    with pytest.raises(study.ConfigError) as raised:
        study.check(config)
    assert str(raised.value) == (
        "experiments.vtab.recipe.batch_size 400 is larger than the 320 training images of datasets.count.train: "
        "lower the batch size or raise the train size"
    )


def test_a_batch_larger_than_the_training_split_fails_before_any_model_is_built(count_task, tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "build", lambda *a, **k: pytest.fail("the model was built"))
    point = {"gp": "00000000", "hp": {"lr": 0.001, "wd": 0.0}}
    spec = training_spec("tune", count_task, tmp_path, "linear", [point], {"epochs": 1, "batch_size": 4096})
    options = specs.Options(threads=1, concurrent=1)
    with pytest.raises(
        ValueError,
        match=r"train.npz: 320 training images of count are fewer than one batch: lower "
        r"experiments.vtab.recipe.batch_size \(4096\)",
    ):
        runs.Session(spec, options, 1, runs.JobDependencies(spec, options))


# A full disk


class _FillsUp(io.FileIO):
    """A real file that reports ENOSPC once `room` bytes are written, as a full disk does."""

    room = 1000

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def _full_disk_open(path, mode="r", *args, **kwargs):
    handle = _FillsUp(path, mode.replace("t", "").replace("b", "") or "r")
    return handle if "b" in mode else io.TextIOWrapper(io.BufferedWriter(handle), *args, **kwargs)


def test_a_checkpoint_save_on_a_full_disk_names_the_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    checkpoint = resume.Checkpoint(tmp_path / "resume" / "tune-00000000-seed0.pt", dependencies())
    checkpoint.save({"params": torch.zeros(4)})  # the previous epoch's, which a failed save must keep
    monkeypatch.setattr(resume, "open", _full_disk_open, raising=False)
    for _ in range(2):  # a retry leaves nothing behind either
        with pytest.raises(OSError) as raised:
            checkpoint.save({"params": torch.randn(10_000)})
        assert raised.value.errno == errno.ENOSPC
        assert str(raised.value).startswith(f"[Errno 28] could not write {checkpoint.path}: disk full")
        assert "inline_container" not in str(raised.value)
    assert os.listdir(checkpoint.path.parent) == [checkpoint.path.name]
    monkeypatch.undo()
    assert torch.equal(checkpoint.load()["params"], torch.zeros(4))


def test_every_atomic_write_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(study_io, "open", _full_disk_open, raising=False)
    target = tmp_path / "metrics.json"
    with pytest.raises(OSError, match=f"could not write {target}: disk full"):
        write_json(target, {"x": "y" * 5000})
    with pytest.raises(OSError, match=r"could not write .*logits\.npz: disk full"):
        study_io.save_npz(tmp_path / "logits.npz", logits=torch.zeros(1000).numpy())
    assert os.listdir(tmp_path) == []


def test_a_writer_that_only_words_the_full_disk_is_named_too(tmp_path):
    """safetensors (Rust) keeps no OSError: its message says 'No space left on device'."""
    target = tmp_path / "peft.safetensors"
    with pytest.raises(OSError, match=f"could not write {target}: disk full"), study_io.atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert os.listdir(tmp_path) == []


def test_other_errors_inside_an_atomic_write_pass_unchanged(tmp_path):
    with pytest.raises(KeyError, match="missing"), study_io.atomic_path(tmp_path / "x.json"):
        raise KeyError("missing")
    assert os.listdir(tmp_path) == []


# A misspelt key


def test_a_misspelt_config_key_is_reported_first_with_its_path_and_the_key_it_meant():
    config = copy.deepcopy(CONFIG)
    config["experiments"]["vtab"]["gird"] = config["experiments"]["vtab"].pop("grid")
    with pytest.raises(ValueError) as raised:
        study_io.validate_config(config)
    lines = str(raised.value).splitlines()
    assert lines[0].startswith("config: experiments.vtab.gird: unknown key (did you mean `grid`?); allowed: ")
    assert len(lines) <= 4  # not the schema


def test_the_workflow_reports_a_misspelt_key_in_a_few_lines(workflow):
    config = copy.deepcopy(CONFIG)
    config["experiments"]["vtab"]["gird"] = config["experiments"]["vtab"].pop("grid")
    proc = workflow.snakemake("-n", "--configfile", str(workflow.config(config)), check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "experiments.vtab.gird: unknown key (did you mean `grid`?)" in output
    assert len(output.splitlines()) < 15, output


# Every grid point diverged


def _select(metrics: list[dict], out: Path) -> Path:
    paths = [out / "tune-pack.json"]  # one tune job's file holding every point
    write_json(paths[0], {"points": metrics}, schema="tune")
    spec = stage_specs.SelectSpec(
        metrics=tuple(str(p) for p in paths),
        grids={"linear": tuple(specs.GridPoint(gp=m["gp"], hp=m["hp"]) for m in metrics)},
        datasets={"count": ("count",)},
        runs_per_job=len(metrics),
        tie_break="last",
        metric="val_top1",
        selected=str(out / "selected.json"),
        summary=str(out / "tune.csv"),
    )
    select.run(spec, specs.Options())
    return out / "selected.json"


def test_a_grid_that_all_diverged_is_recorded_as_such_and_the_tables_show_it(count_task, tmp_path):
    """lr 100 and 200 on the linear probe: both points explode, select records it instead of raising."""
    exploded = _tune_linear(count_task, tmp_path, [100.0, 200.0], "explosion")
    assert [m["status"] for m in exploded] == ["diverged", "diverged"]
    experiment = tmp_path / "vtab"
    run = experiment / "count" / "linear"
    run.mkdir(parents=True)
    selected = _select(exploded, experiment)
    record = select.chosen(selected, "count", "linear")
    assert record["status"] == "all-diverged" and select.chosen_gp(selected, "count", "linear") is None
    assert [r["run"] for r in record["runs"]] == ["vtab/count/linear"] * 2
    assert all("train loss" in r["reason"] for r in record["runs"])
    # collect, with no final runs (none was scheduled), writes the record the analysis and tables read.
    final = run / "final.json"
    collect = stage_specs.CollectSpec(
        experiment="vtab", dataset="count", method="linear", choice=record, metrics=(), record=str(final)
    )
    cli.main(["run", collect.to_json()])
    assert read_json(final, schema="final")["status"] == "all-diverged"
    # The dataset's analysis, its only method diverged: empty, valid files (not an error that stops the report).
    analysis = {kind: tmp_path / f"{kind}.json" for kind in ("ensembles", "agreement")}
    ensemble = stage_specs.EnsembleSpec(
        finals=(str(final),),
        logits=(),
        methods=("linear",),
        confident_k=0.1,
        **{k: str(v) for k, v in analysis.items()},
    )
    cli.main(["run", ensemble.to_json()])
    assert read_json(analysis["ensembles"], schema="ensembles")["ensembles"] == []
    assert read_json(analysis["agreement"], schema="agreement")["pairs"] == []
    tune = tables.tune_table([str(experiment / "tune.csv")])
    assert list(tune["status"]) == ["diverged", "diverged"] and not tune["selected"].any()
    finals = tables.final_table(tables.final_metrics_files([str(final)], ()))
    results = tables.results_table(finals, tables.all_diverged([str(final)]))
    row = results.iloc[0]
    assert tuple(row[["experiment", "dataset", "method", "status"]]) == ("vtab", "count", "linear", "all-diverged")
    assert row["seeds"] == 0 and row[["test_top1", "test_top1_std", "gp"]].isna().all()
    context = {"datasets": {}, "experiments": {"vtab": {"datasets": ["count", "digits"], "grid_points": {"linear": 2}}}}
    vtab = tables.vtab_table(results, context, None)
    assert list(vtab["status"]) == ["all-diverged", "missing"]
    assert vtab["test_top1"].isna().all()
    summary = render.summary({"vtab": vtab, "tune": tune})
    assert summary["all_diverged"] == ["vtab/count/linear"] and summary["missing"] == ["vtab/digits/linear"]
    cells = render.accuracy_tables(vtab, tables.group_means(vtab), 1.0)[0]["rows"][0]["cells"]
    assert cells[0]["ours"] == "all diverged" and cells[0]["diverged"]


def test_robustness_of_an_all_diverged_method_is_recorded_without_scores(tmp_path):
    final = tmp_path / "final.json"
    record = {"experiment": "robustness", "dataset": "shapes", "method": "bitfit", "status": "all-diverged"}
    write_json(final, record | {"tune_runs": [], "runs": []}, schema="final")
    out = {kind: str(tmp_path / f"{kind}.json") for kind in ("ood", "wise")}
    spec = stage_specs.RobustnessSpec(
        method="bitfit",
        backbone=specs.load(specs.Backbone, mini_backbone()),
        final=str(final),
        metrics=(),
        peft=(),
        in_distribution=stage_specs.EvalSet(name="shapes", test="unused.npz"),
        shifted=(stage_specs.EvalSet(name="shapes_sketch", test="unused.npz"),),
        alphas=(0.0, 1.0),
        class_subsets={},
        device="cpu",
        **out,
    )
    cli.main(["run", spec.to_json()])
    assert read_json(out["ood"], schema="ood")["status"] == "all-diverged"
    assert read_json(out["wise"], schema="wise")["points"] == []
    ood, wise = tables.robustness_tables([{"method": "bitfit", "kind": k, "path": p} for k, p in out.items()])
    assert len(ood) == 0 and len(wise) == 0


def test_a_study_with_an_all_diverged_method_still_builds_its_tables_and_report(workflow):
    """LoRA at lr 1000 diverges at its only grid point: no final is scheduled for it, the analysis leaves it
    out, and the tables and the report say all-diverged where its result would be."""
    config = tiny_config()
    del config["robustness"], config["experiments"]["robustness"]
    vtab = config["experiments"]["vtab"]
    vtab.update(
        datasets=["count"], methods=["linear", "bitfit", "lora"], method_grids={"lora": {"r": [2], "lr": [1000.0]}}
    )
    vtab["recipe"]["warmup_epochs"] = 0  # the authors' stepping keeps a 2-epoch run at the warmup lr otherwise
    workflow.snakemake("results/tiny/report/index.html", "--configfile", str(workflow.config(config)))
    root = workflow.root / "results/tiny/vtab/count"
    choices = read_json(root.parent / "selected.json", schema="selected")["datasets"]
    assert choices["count"]["lora"]["status"] == "all-diverged"
    assert not (root / "lora/final").exists()
    assert read_json(root / "lora/final.json", schema="final")["runs"] == []
    assert read_json(root / "analysis/ensembles.json", schema="ensembles")["methods"] == ["bitfit", "linear"]
    tables_dir = workflow.root / "results/tiny/tables"
    vtab_table = pd.read_csv(tables_dir / "vtab.csv").set_index("method")
    assert vtab_table.at["lora", "status"] == "all-diverged" and vtab_table.at["linear", "status"] == "ok"
    page = (workflow.root / "results/tiny/report/index.html").read_text()
    assert "whose every grid point diverged" in page and "vtab/count/lora" in page
    assert ">all diverged<" in page
