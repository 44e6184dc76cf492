"""What a run depends on is defined once (plan.depends.Dependencies), and nothing is reused unless all of it is
unchanged: the static list of a run's package modules covers what a real run of each method imports; the code
digest ignores comments, docstrings and layout and sees a changed default; a tune point trained on other backbone
weights is retrained and the log names the field; a pinned weights file swapped on disk fails even a job that
would reuse every point; a truncated tune entry or epoch checkpoint is set aside, named, and training goes on; an
epoch checkpoint is not resumed after a data, code, device or precision change."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BIN, REPO, Workflow, dependencies, prepare_mini_task, training_spec
from safetensors.torch import load_file, save_file

from peftstudy import methods
from peftstudy.io import load_npz, save_npz
from peftstudy.plan import depends, specs
from peftstudy.train import resume, runs

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
RECIPE = {"epochs": 1, "batch_size": 16, "warmup_epochs": 0}
POINT = {"gp": "0000000a", "hp": {"lr": 0.005, "wd": 0.0001}}
GRID_POINT = specs.GridPoint(**POINT)


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch) -> Path:
    """Each test its own digest cache (inherited by the jobs it starts)."""
    folder = tmp_path / "digests"
    monkeypatch.setenv(depends.DIGEST_CACHE_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    """The mini study's count task, cut to 32 training and 16 validation images (one run takes a second)."""
    out = prepare_mini_task(tmp_path_factory.mktemp("count"), "count", ("train", "val"))
    for split, keep in (("train", 32), ("val", 16)):
        data = load_npz(out / f"{split}.npz")
        save_npz(out / f"{split}.npz", **{k: v[:keep] if v.ndim else v for k, v in data.items()})
    return out


def backbone(weights: Path, sha256: str | None) -> dict:
    spec = dict(CONFIG["backbone"], weights=str(weights), sha256=sha256, keep_head=False)
    del spec["image_size"], spec["pretrain"]
    return spec


def tune_spec(task: Path, out: Path, resume_dir: Path, backbone: dict, method: str = "lora") -> specs.TuneSpec:
    return training_spec(
        "tune", task, out, method, [POINT], RECIPE, backbone=backbone, device="auto", resume_dir=str(resume_dir)
    )


def tune_command(task: Path, out: Path, resume_dir: Path, spec: dict, method: str = "lora") -> list[str]:
    return [str(BIN / "peftstudy"), "run", tune_spec(task, out, resume_dir, spec, method).to_json()]


def tune(cmd: list[str], ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(REPO / "src")), capture_output=True, text=True)
    assert (done.returncode == 0) == ok, done.stderr[-3000:]
    return done


def written_point(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())["points"][0]


def other_weights(source: Path, dest: Path) -> None:
    """Weights of the same architecture with other values (a backbone pretrained again, another download)."""
    state = load_file(source)
    name = next(n for n in sorted(state) if n.endswith("weight"))
    state[name] = state[name] + 0.01
    save_file(state, dest)


@pytest.fixture
def weights(tmp_path) -> Path:
    path = tmp_path / "backbone.safetensors"
    path.write_bytes((REPO / CONFIG["backbone"]["weights"]).read_bytes())
    return path


# The static list of a run's modules, and the code digest.

CHILD = """
import json, os, sys
import numpy, timm, torch, safetensors.torch  # shared by the children; no peftstudy module is loaded yet
assert not [m for m in sys.modules if m.startswith("peftstudy")]
out, commands = sys.argv[1], json.loads(sys.argv[2])
for method, argv in commands.items():
    pid = os.fork()
    if pid == 0:
        from peftstudy.cli import main
        main(argv)
        with open(f"{out}/{method}.json", "w") as handle:
            json.dump(sorted(m for m in sys.modules if m.startswith("peftstudy")), handle)
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0, method
"""


def test_every_package_module_a_run_of_each_method_imports_is_in_its_static_list(task, tmp_path, weights):
    """A tiny tune run of each method in a fresh process (forked from one that has torch and timm loaded): every
    `peftstudy.*` module loaded afterwards is among depends.run_modules(method), so editing any of them (a shared
    settings module like methods/_adapters.py or _fact.py included) changes the run's code digest."""
    commands = {}
    for method in methods.names():
        argv = tune_command(task, tmp_path / method, tmp_path / "resume" / method, backbone(weights, None), method)
        commands[method] = argv[1:]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), json.dumps(commands)],
        env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for method in methods.names():
        loaded = set(json.loads((tmp_path / f"{method}.json").read_text()))
        static = set(depends.run_modules(method))
        assert loaded <= static, (method, sorted(loaded - static))
        assert {f"peftstudy.methods.{method}", f"peftstudy.methods.modules.{method}"} <= loaded
        others = {f"peftstudy.methods.{m}" for m in methods.names() if m != method}
        assert not static & others, method  # another method's edit never makes this one's jobs stale
    assert "peftstudy.methods._adapters" in set(depends.run_modules("lora_p_adapter")) - set(
        depends.run_modules("lora")
    )
    assert "peftstudy.methods._fact" in depends.run_modules("fact_tt")


DIGESTS = """
import json
from peftstudy.plan import depends
print(json.dumps({m: depends.code_digest(m) for m in ("lora", "lora_p_adapter", "rand_h_adapter")}))
"""


def code_digests(wf: Workflow) -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", DIGESTS], env=wf.env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def test_the_code_digest_ignores_comments_docstrings_and_layout_and_sees_every_code_edit(workflow):
    src = workflow.root / "src/peftstudy"
    before = code_digests(workflow)
    engine = src / "train/engine.py"
    engine.write_text(
        "# a comment\n\n\n" + engine.read_text().replace('"""', '"""An edited docstring. ', 1) + "\n# end\n"
    )
    edit(src / "methods/_adapters.py", '"""Settings of a sequential', '"""Reworded: settings of a sequential')
    assert code_digests(workflow) == before
    # The Houlsby and Pfeiffer adapters' shared default: their digests change, LoRA's does not.
    edit(src / "methods/_adapters.py", "default=0.1, metadata", "default=0.2, metadata")
    after = code_digests(workflow)
    assert after["lora"] == before["lora"]
    assert after["lora_p_adapter"] != before["lora_p_adapter"] and after["rand_h_adapter"] != before["rand_h_adapter"]
    # The engine: every method's.
    engine.write_text(engine.read_text() + "\nEDITED = True\n")
    assert all(code_digests(workflow)[m] != after[m] for m in after)


def test_a_new_data_source_analysis_table_or_config_check_leaves_every_training_digest_as_it_was(workflow):
    """A training run imports plan.specs (its own specs and the machinery), not the plan, the config's checks, the
    sources or the other stages' specs: editing those reruns no training (plan.specs.OTHER_SPEC_MODULES)."""
    src = workflow.root / "src/peftstudy"
    before = code_digests(workflow)
    new_spec = (
        "\n\n@dataclasses.dataclass(frozen=True, kw_only=True)\n"
        "class MarginSpec(Spec):\n    stage: ClassVar[str] = 'margin'\n"
    )
    for path in ("plan/stage_specs.py", "plan/sources/synthetic.py", "plan/study.py", "plan/jobs.py"):
        (src / path).write_text(
            (src / path).read_text() + (new_spec if path.endswith("stage_specs.py") else "\nX = 1\n")
        )
    edit(src / "plan/stage_specs.py", '"tune": "",', '"tune": "",\n    "margins": "Margins",')
    assert code_digests(workflow) == before
    edit(src / "plan/specs.py", "MAX_ARGUMENT = 100_000", "MAX_ARGUMENT = 99_000")
    assert all(digest != before[m] for m, digest in code_digests(workflow).items())


# The record.


def test_reuse_needs_every_field_equal_and_a_difference_is_named():
    old = dependencies(backbone_weights="267b2e" + "0" * 58)
    assert depends.Dependencies.from_dict(old.as_dict()) == old
    assert old.differences(depends.Dependencies.from_dict(json.loads(json.dumps(old.as_dict())))) == []
    new = dependencies(backbone_weights="bca4af" + "0" * 58, precision="bf16", settings=dict(old.settings, seed=1))
    assert new.differences(old) == [
        "settings differ (seed)",
        "backbone weights differ (267b2e… -> bca4af…)",
        "precision differs (fp32 -> bf16)",
    ]
    assert new.key != old.key
    for field in dataclasses.fields(depends.Dependencies):  # no field is left out of the key
        assert dataclasses.replace(old, **{field.name: "other"}).key != old.key, field.name


def test_a_file_digest_is_taken_once_and_again_when_the_file_changes(tmp_path, monkeypatch, digest_cache):
    hashed = []
    real = depends.sha256_file
    monkeypatch.setattr(depends, "sha256_file", lambda path: hashed.append(path) or real(path))
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    first = depends.file_sha256(path)
    depends._cached_sha256.cache_clear()  # another process: the digest cache on disk answers
    assert depends.file_sha256(path) == first and len(hashed) == 1
    path.write_bytes(b"b" * 1000)  # same size, new content
    assert depends.file_sha256(path) != first and len(hashed) == 2
    entries = list(digest_cache.iterdir())
    assert len(entries) == 1 and json.loads(entries[0].read_text())["sha256"] == depends.file_sha256(path)


# Tune points and epoch checkpoints.


def test_tune_points_trained_on_other_backbone_weights_are_retrained_and_the_log_names_the_field(
    task, tmp_path, weights
):
    """A backbone pretrained again (`pretrain.lr` changed) or downloaded again from another URL: the same path,
    no pinned sum, other weights."""
    resume_dir = tmp_path / "resume"
    cmd = tune_command(task, tmp_path, resume_dir, backbone(weights, None))
    tune(cmd)
    old = depends.file_sha256(weights)
    assert written_point(tmp_path)["provenance"]["backbone_sha256"] == old
    assert "1 of 1 grid points reused" in tune(cmd).stdout
    other_weights(weights, weights)
    new = depends.file_sha256(weights)
    again = tune(cmd)
    assert "reused" not in again.stdout
    entry = resume_dir / f"tune-{POINT['gp']}.json"
    assert f"{entry}: not reused: backbone weights differ ({old[:6]}… -> {new[:6]}…)" in again.stderr
    assert written_point(tmp_path)["provenance"]["backbone_sha256"] == new


def test_a_pinned_weights_file_swapped_on_disk_fails_a_tune_job_even_one_that_would_reuse_every_point(
    task, tmp_path, weights
):
    pinned = depends.file_sha256(weights)
    cmd = tune_command(task, tmp_path, tmp_path / "resume", backbone(weights, pinned))
    tune(cmd)
    other_weights(weights, weights)
    failed = tune(cmd, ok=False)
    assert f"backbone weights {weights}: sha256 is {depends.file_sha256(weights)}, expected {pinned}" in failed.stderr


def test_a_truncated_or_tampered_tune_entry_is_set_aside_named_and_the_point_retrained(task, tmp_path, weights):
    resume_dir = tmp_path / "resume"
    cmd = tune_command(task, tmp_path, resume_dir, backbone(weights, None))
    tune(cmd)
    entry = resume_dir / f"tune-{POINT['gp']}.json"
    whole = entry.read_text()
    entry.write_text(whole[: len(whole) // 2])
    again = tune(cmd)
    assert f"{entry}: unreadable (" in again.stderr and "set aside as tune-0000000a.json.corrupt" in again.stderr
    assert "reused" not in again.stdout
    assert (resume_dir / "tune-0000000a.json.corrupt").read_text() == whole[: len(whole) // 2]
    tampered = json.loads(entry.read_text())
    tampered["metrics"]["metrics"]["val_top1"] = 100.0
    entry.write_text(json.dumps(tampered))
    again = tune(cmd)
    assert f"{entry}: unreadable (its content does not match its sha256)" in again.stderr
    assert written_point(tmp_path)["metrics"]["val_top1"] != 100.0


def job(task: Path, weights: Path, recipe: dict = RECIPE, **changes: str) -> runs.JobDependencies:
    """The dependencies of a tune job of POINT; `changes` replace the spec's fields (its files)."""
    spec = training_spec("tune", task, task, "lora", [POINT], recipe, backbone=backbone(weights, None), device="auto")
    return runs.JobDependencies(dataclasses.replace(spec, **changes), specs.Options())


def test_a_truncated_epoch_checkpoint_is_set_aside_named_and_the_run_starts_afresh(task, tmp_path, weights):
    resume_dir = tmp_path / "resume"
    checkpoint = resume_dir / f"tune-{POINT['gp']}-seed0.pt"
    dependencies = job(task, weights)
    resume.Checkpoint(checkpoint, dependencies.of(GRID_POINT, 0)).save({"params": torch.zeros(1000)})
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[: len(whole) - 100])
    done = tune(tune_command(task, tmp_path, resume_dir, backbone(weights, None)))
    assert f"{checkpoint}: unreadable (its content does not match its sha256 (truncated or damaged))" in done.stderr
    assert "set aside as tune-0000000a-seed0.pt.corrupt" in done.stderr and "resumed from" not in done.stderr
    assert written_point(tmp_path)["epochs_run"] == RECIPE["epochs"]
    assert (resume_dir / "tune-0000000a-seed0.pt.corrupt").exists() and not checkpoint.exists()
    # Not one of ours at all (a foreign file, or one of an older peftstudy): the same.
    checkpoint.write_bytes(b"PK\x03\x04 not a checkpoint")
    assert resume.Checkpoint(checkpoint, dependencies.of(GRID_POINT, 0)).load() is None
    assert not checkpoint.exists()


def test_an_epoch_checkpoint_is_not_resumed_after_a_data_code_device_or_precision_change(
    task, tmp_path, weights, monkeypatch, capsys
):
    saved = job(task, weights).of(GRID_POINT, 0)
    assert (saved.device, saved.precision) == ("cpu", "fp32")  # resolved: `auto` is not what ran
    checkpoint = resume.Checkpoint(tmp_path / "tune-0000000a-seed0.pt", saved)
    checkpoint.save({"params": torch.ones(3)})
    assert torch.equal(checkpoint.load()["params"], torch.ones(3))

    changed_train = tmp_path / "train.npz"
    data = load_npz(task / "train.npz")
    save_npz(changed_train, **dict(data, labels=data["labels"][::-1].copy()))
    relabelled = job(task, weights, train=str(changed_train))
    bf16 = job(task, weights, recipe=dict(RECIPE, precision="bf16"))
    monkeypatch.setattr(depends, "code_digest", lambda method: "e" * 16)  # what an edit of engine.py gives
    edited = job(task, weights)
    monkeypatch.undo()
    changed = {
        "data differ (train:": relabelled,
        "code differs (": edited,
        "settings differ (recipe); precision differs (fp32 -> bf16)": bf16,
    }
    for phrase, other in changed.items():
        record = other.of(GRID_POINT, 0)
        assert record.key != saved.key
        assert resume.Checkpoint(checkpoint.path, record).load() is None
        assert f"{checkpoint.path}: not resumed: {phrase}" in capsys.readouterr().err
    on_gpu = dataclasses.replace(saved, device="cuda", precision="bf16")
    assert resume.Checkpoint(checkpoint.path, on_gpu).load() is None
    assert "device differs (cpu -> cuda); precision differs (fp32 -> bf16); starting afresh" in capsys.readouterr().err
    assert checkpoint.path.exists()  # a whole checkpoint of another run is kept until this run's first epoch


# The same definition gives the jobs' Snakemake params.


@pytest.mark.slow
def test_a_changed_shared_adapter_default_makes_exactly_the_adapter_jobs_stale_and_they_retrain(workflow):
    """`scale`'s default in methods/_adapters.py (the Houlsby and Pfeiffer adapters'): a dry run lists the Pfeiffer
    adapter's tune job and not LoRA's, and the rerun trains it again (its kept point is not reused) with the new
    scale. A comment edit in train/engine.py leaves nothing to do."""
    from conftest import jobs, tiny_config

    from peftstudy.plan.jobs import Plan

    config = tiny_config()
    del config["experiments"]["robustness"], config["robustness"]
    vtab = config["experiments"]["vtab"]
    vtab.update(datasets=["count"], methods=["lora_p_adapter", "lora"], method_grids={"lora": {"r": [2]}})
    path = str(workflow.config(config, "adapters.yaml"))
    targets = Plan.of(config).tune_metrics("vtab")
    workflow.snakemake(*targets, "--configfile", path)
    src = workflow.root / "src/peftstudy"
    engine = src / "train/engine.py"
    engine.write_text(engine.read_text() + "\n# a comment changes no result\n")
    assert "Nothing to be done" in workflow.snakemake(*targets, "-n", "--configfile", path).stdout
    edit(src / "methods/_adapters.py", "default=0.1, metadata", "default=0.2, metadata")
    planned = jobs(workflow.snakemake(*targets, "-n", "--configfile", path).stdout)
    assert [(rule, wc["method"]) for rule, wc in planned if rule != "all"] == [("tune", "lora_p_adapter")]
    proc = workflow.snakemake(*targets, "--configfile", path)
    assert [(rule, wc["method"]) for rule, wc in jobs(proc.stdout + proc.stderr)] == [("tune", "lora_p_adapter")]
    (log,) = (workflow.root / "results/tiny/vtab/count/lora_p_adapter/tune").glob("*/log.txt")
    assert "not reused: code differs" in log.read_text() and "grid points reused" not in log.read_text()
    (metrics,) = (workflow.root / "results/tiny/vtab/count/lora_p_adapter/tune").glob("*/metrics.json")
    assert json.loads(metrics.read_text())["points"][0]["method_config"]["scale"] == 0.2
