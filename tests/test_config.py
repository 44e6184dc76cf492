"""Config validation (schema + cross-references), grid expansion and grid-point ids."""

from __future__ import annotations

import copy
import itertools
import os

import pytest
import yaml
from conftest import REPO
from snakemake.utils import update_config

from peftstudy import cli, methods
from peftstudy import io as study_io
from peftstudy.plan import study
from peftstudy.plan.tasks import vtab_groups

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
        # The recipe's choices and the task table are checked from their one definition (plan.recipe, tables/).
        (
            lambda c: c["experiments"]["vtab"]["recipe"].update(augment="flip"),
            "experiments.vtab.recipe.augment 'flip': use one of none, hflip, crop_flip, crop_flips",
        ),
        (
            lambda c: c["datasets"].update(svhn={"source": "tfds", "vtab_task": "svhn_cropped", "classes": 10}),
            "datasets.svhn.vtab_task: unknown task 'svhn_cropped'",
        ),
        (  # a processed archive's folder names its task: the classes are the table's
            lambda c: c["datasets"].update(
                dtd={"source": "archive", "archive": "vtab_1k", "folder": "vtab-1k/dtd", "classes": 40}
            ),
            "datasets.dtd.classes: the VTAB task dtd has 47 classes",
        ),
        (
            lambda c: c["backbone"].update(
                source={"url": "resources/archives/clip", "sha256": None, "format": "torch"}
            ),
            "backbone.source.url resources/archives/clip: 'clip' is not one of `archives`",
        ),
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


def test_packs_hold_each_point_once_in_grid_order_and_an_edit_changes_one_pack():
    config = copy.deepcopy(DEFAULT)
    vtab = config["experiments"]["vtab"]
    vtab["runs_per_job"] = {"tune": 2}
    vtab["method_grids"]["lora"] = {"r": [1, 2, 4, 8]}  # 2 lr x 4 r = 8 points -> 4 packs of 2 on average
    vtab["method_grids"]["full"] = {"lr": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]}  # 7 points -> 4 packs
    jobs = study.tune_jobs(config)
    grid = list(study.grids(config)["vtab", "lora"])
    lora = jobs["vtab", "lora"]
    assert sorted(gp for gps in lora.values() for gp in gps) == sorted(grid)
    assert all(gps == sorted(gps, key=grid.index) for gps in lora.values())
    # 4 packs (some may be empty: a point's pack is its id's, so sizes vary around the mean of 2).
    assert {name.split("-")[0] for name in lora} == {"pack4"}
    # Adding a point, then removing one, changes exactly one pack: the others keep their names and points.
    before = jobs["vtab", "full"]
    vtab["method_grids"]["full"]["lr"].append(0.8)  # 8 points: still 4 packs
    added = study.tune_jobs(config)["vtab", "full"]
    assert len([name for name in added if added[name] != before.get(name)]) == 1
    del vtab["method_grids"]["full"]["lr"][0]
    removed = study.tune_jobs(config)["vtab", "full"]
    assert len([name for name in added if removed.get(name) != added[name]]) == 1
    # One point per job: named by its id.
    config["experiments"]["robustness"]["runs_per_job"] = {"tune": 1}
    points = study.tune_jobs(config)["robustness", "bitfit"]
    assert points == {gp: [gp] for gp in study.grids(config)["robustness", "bitfit"]}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"thredas": 2}, "config: thredas: unknown key (did you mean `threads`?)"),
        ({"threads": "two"}, "config: threads: 'two' is not of type 'integer'"),
        (
            {"experiments": {"vtab": {"methods": ["lorra"]}}},
            f"unknown method 'lorra'; known: {KNOWN}",
        ),
        (
            {"experiments": {"vtab": {"recipe": {"epochs": 8, "batch_size": 32, "lr_stpe": "x"}}}},
            "config: experiments.vtab.recipe.lr_stpe: unknown key (did you mean `lr_step`?)",
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


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (("grid", "lr", 0), float("nan"), "experiments.vtab.grid.lr[0]: nan is not a finite number"),
        (("method_grids", "full", "lr", 0), float("inf"), "experiments.vtab.method_grids.full.lr[0]: inf is not a"),
        (("recipe", "warmup_lr"), float("-inf"), "experiments.vtab.recipe.warmup_lr: -inf is not a finite number"),
    ],
)
def test_a_non_finite_number_is_refused_at_parse_time_naming_its_key(where, value, message):
    """YAML's .nan and .inf are numbers that pass the schema's ranges: nan failed inside torch, inf trained and its
    result could then not be written (JSON has no infinity)."""
    config = copy.deepcopy(DEFAULT)
    node = config["experiments"]["vtab"]
    for key in where[:-1]:
        node = node.setdefault(key, {})
    node[where[-1]] = value
    with pytest.raises(ValueError) as raised:
        study_io.validate_config(config)
    assert str(raised.value).startswith(f"config: {message}")


def test_a_config_that_is_not_valid_yaml_is_named_with_its_line(workflow, monkeypatch):
    """The default config (read by the Snakefile), an included study and `peftstudy estimate`'s files: the file,
    line and column of the syntax error, not Snakemake's "Config file is not valid JSON or YAML"."""
    default = workflow.root / "config.yaml"
    lines = default.read_text().splitlines()
    lines.insert(3, "  extra: [1, 2")  # an indented key under a scalar, an unclosed list
    default.write_text("\n".join(lines) + "\n")
    proc = workflow.snakemake("-n", check=False)
    assert proc.returncode != 0
    assert "config.yaml, line 4, column 8: not valid YAML" in proc.stdout + proc.stderr
    monkeypatch.chdir(workflow.root)
    with pytest.raises(study.ConfigError, match=r"^config.yaml, line 4, column 8: not valid YAML .*fix the syntax"):
        study.compose({"include": ["config.yaml"]})
    with pytest.raises(SystemExit, match=r"peftstudy estimate: config.yaml, line 4, column 8: not valid YAML"):
        cli.main(["estimate", "--configfile", "config.yaml"])


def job_stats(output: str) -> dict[str, int]:
    """Snakemake's "Job stats" table of a dry run: rule -> jobs."""
    lines = output.split("Job stats:", 1)[1].splitlines()[3:]
    stats = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        stats[parts[0]] = int(parts[1])
    return stats


def localrules(root, configfile: str) -> set[str]:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    cwd = os.getcwd()
    os.chdir(root)
    try:
        with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
            parsed = api.workflow(
                snakefile=root / "Snakefile",
                resource_settings=ResourceSettings(),
                config_settings=ConfigSettings(configfiles=[root / configfile]),
                workdir=root,
            )
            return set(parsed._workflow._localrules)
    finally:
        os.chdir(cwd)


@pytest.mark.slow
def test_the_vtab1k_study_plans_the_papers_runs_and_fetches_on_the_login_node(workflow):
    proc = workflow.snakemake("-n", "--configfile", "studies/vtab1k.yaml")
    out = proc.stdout + proc.stderr
    stats = job_stats(out)
    # 516 grid points per task in dense jobs (runs_per_job.tune 32: 27 per task); one selection.
    config = study.compose(yaml.safe_load((workflow.root / "studies/vtab1k.yaml").read_text()))
    assert planned_tunes(config) == 19 * 516 == 9_804
    assert stats["tune"] == tune_jobs(config) == 19 * 27 and stats["select"] == 1
    assert stats["fetch"] == 1 and stats["extract"] == 1 and stats["fetch_backbone"] == 1
    assert stats["source_local"] == 19  # each task indexed where it was extracted
    # Downloads are localrules (login node); a dry run's log does not say so, the parsed workflow does.
    assert {"fetch", "extract", "fetch_backbone"} <= localrules(workflow.root, "studies/vtab1k.yaml")
    # The clean overlay: full FT's own grid of 8 points (4 lr x 2 wd) instead of 4.
    clean = job_stats(
        workflow.snakemake("-n", "--configfile", "studies/vtab1k.yaml", "studies/vtab1k-clean.yaml").stdout
    )
    clean_config = copy.deepcopy(config)  # the overlay merged as Snakemake merges configfiles
    update_config(clean_config, yaml.safe_load((workflow.root / "studies/vtab1k-clean.yaml").read_text()))
    assert planned_tunes(clean_config) == 9_804 + 19 * 4 and clean["tune"] == tune_jobs(clean_config)


def per_tuning_set(config: dict, units: dict) -> int:
    """`units` (grid points or tune jobs per (experiment, method)) summed over every dataset and its tuning folds."""
    return sum(
        (1 + len(config["datasets"][dataset].get("folds", []))) * len(units[name, method])
        for name, exp in config["experiments"].items()
        for dataset in exp["datasets"]
        for method in exp["methods"]
    )


def tune_jobs(config: dict) -> int:
    """Tune jobs of a study config: its packs (plan.study.tune_jobs) on every dataset and tuning fold."""
    return per_tuning_set(config, study.tune_jobs(config))


def planned_tunes(config: dict) -> int:
    """Tune runs a study config asks for, counted from the config alone: every grid point of every method on every
    dataset and each of its tuning folds."""
    return per_tuning_set(config, study.grids(config))


@pytest.mark.slow
def test_the_paper_study_brings_vtab_manyshot_and_robustness_together(workflow, monkeypatch):
    monkeypatch.chdir(workflow.root)  # include paths are relative to where snakemake runs
    names = ("vtab1k", "manyshot", "robustness", "paper")
    read = {name: yaml.safe_load((workflow.root / f"studies/{name}.yaml").read_text()) for name in names}
    studies = {name: study.compose(config) for name, config in read.items()}
    paper = studies["paper"]
    assert paper["study"] == "paper" and set(paper["experiments"]) == {
        e for name in ("vtab1k", "manyshot", "robustness") for e in studies[name]["experiments"]
    }
    for name in ("manyshot", "robustness"):
        study.check(studies[name])
    # docs/protocol.md §B.3: per dataset group, 9 widths x (LoRA + adapter x 2 scales + FacT-TK x 2 scales)
    # x 12 lr/wd/drop-path points, and linear/full/BitFit/SSF x 12; the 5-fold subsets tune on each fold.
    # docs/protocol.md §B.4: 15 methods x 2 drop-paths.
    assert planned_tunes(studies["manyshot"]) == 13_742 and planned_tunes(studies["robustness"]) == 30
    stats = job_stats(workflow.snakemake("-n", "--configfile", "studies/paper.yaml").stdout)
    assert planned_tunes(paper) == 9_804 + 13_742 + 30 and stats["tune"] == tune_jobs(paper)
    assert stats["select"] == len(paper["experiments"])
    # The cluster's share (issue 16): every job but the login node's (localrules) is one Slurm submission.
    local = localrules(workflow.root, "studies/paper.yaml")
    planned = sum(n for rule, n in stats.items() if rule not in local and rule != "total")
    # The finals hide behind the selections in a fresh plan: one job per seed of each (method, dataset).
    finals = sum(len(e["datasets"]) * len(e["methods"]) * len(e["seeds"]) for e in paper["experiments"].values())
    assert planned + finals <= 3_000, (planned, finals, stats)
    # Many-shot subsets read whole archives (cluster jobs); the rest are local: 19 VTAB tasks indexed, ImageNet-1K's
    # few-shot draw gated, 1 TFDS task built. ImageNet's four shifts are read only by the robustness jobs, whose
    # inputs are the selected finals' files: they are planned once that selection is made, like the finals.
    assert stats["source"] == 24 and stats["manyshot_lists"] == 12 and stats["source_local"] == 19 + 1 + 1
    # One rule per stage: the two backbones fetched (IN21k ViT-B/16, CLIP) and CLIP's head are jobs of one rule each.
    assert stats["fetch_backbone"] == 2 and stats["zero_shot_head"] == 1
    downloads = {"fetch", "extract", "fetch_backbone", "source_local", "manyshot_lists"}
    assert downloads <= localrules(workflow.root, "studies/paper.yaml")


def test_the_vtab1k_study_lists_the_task_table_under_its_group_comments():
    """studies/vtab1k.yaml writes its 19 datasets under '# <group>' comments: the same tasks, groups and order
    as the task table (the classes are checked by study.check)."""
    listed: dict[str, list[str]] = {}
    group = None
    lines = (REPO / "studies/vtab1k.yaml").read_text().split("\ndatasets:\n", 1)[1].splitlines()
    for line in itertools.takewhile(lambda line: not line or line.startswith(" "), lines):
        if line.strip().startswith("#"):
            group = line.strip("# ")
        elif line.strip():
            listed.setdefault(group, []).append(line.split(":")[0].strip())
    assert {g: tuple(names) for g, names in listed.items()} == vtab_groups()


def _nodes(node):
    """Every mapping in a parsed schema, depth first."""
    if isinstance(node, dict):
        yield node
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            yield from _nodes(item)


def test_the_schema_allows_exactly_the_weight_formats_the_converter_reads():
    """A backbone's `source.format` is checked by the schema at DAG time and read by models.convert: one list."""
    from peftstudy import models

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    enums = [n["properties"]["format"]["enum"] for n in _nodes(schema) if "format" in n.get("properties", {})]
    assert enums and all(tuple(enum) == models.FORMATS for enum in enums)
