"""Config validation (schema + cross-references), grid expansion and grid-point ids."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from peftstudy import config as study
from peftstudy import methods

KNOWN = ", ".join(methods.names())

DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())


def test_grid_order_is_sklearn_parameter_grid_order():
    grid = study.expand_grid({"wd": [1, 2], "lr": [0.1, 0.2], "r": [4]})
    assert [(g["lr"], g["r"], g["wd"]) for g in grid] == [(0.1, 4, 1), (0.1, 4, 2), (0.2, 4, 1), (0.2, 4, 2)]


def test_grid_point_ids_are_stable_and_normalise_numbers():
    assert study.gp_id({"lr": 0.001, "wd": 1}) == study.gp_id({"wd": 1.0, "lr": 1e-3})
    assert study.gp_id({"lr": 0.001}) != study.gp_id({"lr": 0.002})
    assert study.gp_id({"lr": 0.001, "r": 8}) == "c446bbfa"  # fixed forever: results on disk are keyed by it


def test_method_grid_overrides_the_common_grid():
    exp = {"grid": {"lr": [0.1, 0.2], "wd": [0.0]}, "method_grids": {"full": {"lr": [0.01]}, "lora": {"r": [1, 2]}}}
    assert study.method_grid(exp, "full") == [{"lr": 0.01, "wd": 0}]
    assert len(study.method_grid(exp, "lora")) == 4
    assert study.method_grid(exp, "bitfit") == [{"lr": 0.1, "wd": 0}, {"lr": 0.2, "wd": 0}]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["experiments"]["vtab"]["methods"].append("lorra"), f"unknown method 'lorra'; known: {KNOWN}"),
        (
            lambda c: c["experiments"]["vtab"]["datasets"].append("svhn"),
            "experiments.vtab.datasets[3]: unknown dataset",
        ),
        (lambda c: c["experiments"]["vtab"]["method_grids"]["lora"].update(rank=[4]), "takes no grid key 'rank'"),
        (
            lambda c: c["experiments"]["robustness"]["method_grids"].update(ssf={"lr": [1]}),
            "experiments.robustness.method_grids.ssf: 'ssf' is not one of this experiment's methods",
        ),
        (lambda c: c["robustness"]["ood"].append("count"), "another label space"),
    ],
)
def test_cross_reference_errors_name_the_key_and_what_is_allowed(edit, message):
    config = copy.deepcopy(DEFAULT)
    edit(config)
    with pytest.raises(study.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        study.check(config)


def test_the_default_config_is_valid():
    study.check(DEFAULT)
    grids = study.grids(DEFAULT)
    assert set(DEFAULT["experiments"]["vtab"]["methods"]) == set(methods.names())  # all 16
    assert all(len(grids["vtab", m]) == 2 for m in methods.names())


def test_packs_chunk_each_grid_in_grid_order():
    config = copy.deepcopy(DEFAULT)
    vtab = config["experiments"]["vtab"]
    vtab["runs_per_job"] = {"tune": 2}
    vtab["method_grids"]["lora"] = {"r": [1, 2, 4]}  # 2 lr x 3 r = 6 points -> 3 packs
    vtab["method_grids"]["full"] = {"lr": [0.1, 0.2, 0.3]}  # 3 points -> 2 packs, the last of one
    packs = study.tune_packs(config)
    grids = study.grids(config)
    assert [gp for pack in packs["vtab", "lora"] for gp in pack] == list(grids["vtab", "lora"])
    assert [len(p) for p in packs["vtab", "lora"]] == [2, 2, 2]
    assert [len(p) for p in packs["vtab", "full"]] == [2, 1]
    config["experiments"]["robustness"]["runs_per_job"] = {"tune": 1}
    assert not [key for key in study.tune_packs(config) if key[0] == "robustness"]
    assert study.pack_id(packs["vtab", "full"][0]) != study.pack_id(packs["vtab", "full"][1])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"thredas": 2}, "Additional properties are not allowed ('thredas' was unexpected)"),
        ({"threads": "two"}, "'two' is not of type 'integer'"),
        (
            {"experiments": {"vtab": {"methods": ["lorra"]}}},
            f"unknown method 'lorra'; known: {KNOWN}",
        ),
        (
            {"experiments": {"vtab": {"recipe": {"epochs": 8, "batch_size": 32, "lr_stpe": "x"}}}},
            "'lr_stpe' was unexpected",
        ),
    ],
)
def test_snakemake_stops_before_any_job_on_a_bad_config(workflow, override, message):
    config = copy.deepcopy(DEFAULT)
    for key, value in override.items():
        if isinstance(value, dict) and key == "experiments":
            config["experiments"]["vtab"].update(value["vtab"])
        else:
            config[key] = value
    path = workflow.config(config)
    proc = workflow.snakemake("--configfile", str(path), "-n", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (workflow.root / "results").exists()
