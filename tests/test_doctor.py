"""`peftstudy doctor` (issue 26): each check over fake probes, on its passing and failing paths with the fix it
names; the whole preflight through the CLI; the smoke study's dry run; and on the one-node Slurm of CI, the
device test as a Slurm job on the profile's partition (its GPU is fake, so CUDA fails there, as it should)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_repo, jobs
from test_slurm import slurm  # noqa: F401  (the fixture: skip here, fail under CI=true)

from peftstudy import doctor, io
from peftstudy.doctor import FAIL, OK, SKIP, WARN, Check, Probes, Profile, Result
from peftstudy.plan.jobs import Plan

SMOKE = yaml.safe_load((REPO / "studies/smoke.yaml").read_text())
SUM_A, SUM_B = "a" * 64, "b" * 64
LOCAL = Profile("workflow/profiles/default/config.yaml", {"cores": 2})
SLURM = Profile(
    "slurm/config.yaml",
    {
        "executor": "slurm",
        "jobs": 4,
        "slurm-status-command": "squeue",
        "default-resources": {"slurm_partition": "gpu", "slurm_account": "lab", "slurm_extra": "'--constraint=h100'"},
    },
)


def plan_of(config: dict) -> Plan:
    io.validate_config(config)
    return Plan.of(config)


def smoke(**changes) -> Plan:
    config = copy.deepcopy(SMOKE)
    config.update(changes)
    return plan_of(config)


def fake(files: dict[str, str] | None = None, **overrides) -> Probes:
    """Probes over a file system of `files` (path -> sha256), no network, no commands (each test adds its own)."""
    files = files or {}

    def no_command(cmd: Sequence[str], timeout: float) -> Result:
        raise AssertionError(f"unexpected command {cmd}")

    defaults = dict(
        run=no_command,
        which=lambda name: None,
        head=lambda url, timeout: (False, "no network in this test"),
        sha256=lambda path: files[path],
        exists=lambda path: path in files,
        size=lambda path: 344_000_000,
        free_bytes=lambda path: 10**12,
        module_dir=lambda name: f"/env/lib/{name}",
        find=lambda pattern: [],
        python="/env/bin/python",
        user=lambda: "alice",
    )
    return Probes(**{**defaults, **overrides})


def status(lines: list[Check], name: str) -> tuple[str, str]:
    """(status, fix) of the one line called `name`."""
    [line] = [line for line in lines if line.name == name]
    return line.status, line.fix


# Weights and data: pinned, reachable, their sums right.


def test_an_unpinned_download_fails_unless_the_config_allows_it_and_the_fix_names_the_key():
    args = ("weights", "backbone", "https://x/ViT-B_16.npz", None, "backbone.source")
    probes = fake(head=lambda url, timeout: (True, "HTTP 200"))
    lines = doctor.check_source(*args, False, probes, True)
    state, fix = status(lines, "backbone pinned")
    assert (
        state == FAIL and fix == "fetch it once (its sum is printed), then pin it: backbone.source.sha256: <that sum>"
    )
    assert status(lines, "backbone reachable")[0] == OK
    assert status(doctor.check_source(*args, True, probes, True), "backbone pinned")[0] == WARN


def test_a_url_that_does_not_answer_fails_and_is_not_asked_with_network_skipped():
    asked = []

    def head(url: str, timeout: float) -> tuple[bool, str]:
        asked.append((url, timeout))
        return False, "HTTP 404 Not Found"

    args = ("data", "archives.a", "https://x/a.tar", SUM_A, "archives.a", False, fake(head=head))
    state, fix = status(doctor.check_source(*args, True), "archives.a reachable")
    assert state == FAIL and "set archives.a.url to its path" in fix
    assert asked == [("https://x/a.tar", doctor.HEAD_TIMEOUT)]
    assert status(doctor.check_source(*args, False), "archives.a reachable")[0] == SKIP and len(asked) == 1


def test_a_local_file_is_hashed_against_its_pin():
    args = ("data", "archives.a", "downloads/a.tar", SUM_A, "archives.a", False)
    assert status(doctor.check_source(*args, fake({"downloads/a.tar": SUM_A}), False), "archives.a sha256")[0] == OK
    state, fix = status(doctor.check_source(*args, fake({"downloads/a.tar": SUM_B}), False), "archives.a sha256")
    assert state == FAIL and "correct archives.a.sha256" in fix
    state, fix = status(doctor.check_source(*args, fake(), False), "archives.a reachable")
    assert state == FAIL and fix.startswith("put the file at downloads/a.tar")
    # Here but not pinned: the fix is the line to add.
    unpinned = ("data", "archives.a", "downloads/a.tar", None, "archives.a", False, fake({"downloads/a.tar": SUM_B}))
    state, fix = status(doctor.check_source(*unpinned, False), "archives.a pinned")
    assert state == FAIL and fix == f"if it is the file you mean, pin it: archives.a.sha256: {SUM_B}"


def test_weights_already_here_are_checked_against_the_pin_of_what_they_were_made_from():
    plan = smoke(allow_unpinned=False)
    pinned = copy.deepcopy(SMOKE)
    pinned["backbone"]["source"]["sha256"] = SUM_A
    weights = SMOKE["backbone"]["weights"]
    here = fake({weights: SUM_B})

    def made_from(digest: str | None):
        return lambda path: {"source_sha256": digest} if path == weights else {}

    assert status(doctor.check_weights(plan_of(pinned), here, False, made_from(SUM_A)), "backbone")[0] == OK
    state, fix = status(doctor.check_weights(plan_of(pinned), here, False, made_from(SUM_B)), "backbone")
    assert state == FAIL and fix == f"remove {weights} (converted from another download) so that it is fetched again"
    state, fix = status(doctor.check_weights(plan, here, False, made_from(SUM_B)), "backbone")
    assert state == FAIL and fix == f"pin backbone.source.sha256: {SUM_B}"
    # Their own sum, where it is pinned, is checked by hashing them.
    own = copy.deepcopy(pinned)
    own["backbone"]["sha256"] = SUM_A
    assert status(doctor.check_weights(plan_of(own), here, False), "backbone sha256")[0] == FAIL
    assert status(doctor.check_weights(plan_of(own), fake({weights: SUM_A}), False), "backbone sha256")[0] == OK


def archive_study(sha256: str | None) -> Plan:
    config = copy.deepcopy(SMOKE)
    config["archives"] = {"vtab_1k": {"url": "resources/downloads/vtab-1k.tar.gz", "sha256": sha256}}
    config["datasets"] = {"dtd": {"source": "archive", "archive": "vtab_1k", "folder": "vtab-1k/dtd", "classes": 47}}
    return plan_of(config)


def test_a_fetched_archive_is_held_to_its_pin_and_a_missing_one_must_be_put_in_place():
    recorded = "resources/archives/vtab_1k.sha256"  # what the fetch rule wrote beside the archive
    name = "archives.vtab_1k (dtd)"
    for pin, digest, expected in ((SUM_A, SUM_A, OK), (SUM_A, SUM_B, FAIL), (None, SUM_B, WARN)):
        fetched = fake({recorded: ""}, read=lambda path, d=digest: f"{d}  vtab_1k\n")
        lines = doctor.check_data(archive_study(pin), fetched, False)
        assert status(lines, name)[0] == expected, (pin, digest)
    state, fix = status(doctor.check_data(archive_study(SUM_A), fake(), False), f"{name} reachable")
    assert state == FAIL and fix.startswith("put the file at resources/downloads/vtab-1k.tar.gz")


def test_a_tfds_task_is_built_or_prepared_or_its_registered_downloads_answer():
    manifest, dtd_list = "results/smoke/data/dtd/manifest.json", "/env/lib/tensorflow_datasets/url_checksums/dtd.txt"
    url = "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz"
    registered = {dtd_list: ""}
    answers = {url: (False, "timed out")}
    probes = fake(registered, read=lambda path: f"{url}\t625239812\t{SUM_A}\n", head=lambda u, t: answers[u])
    state, fix = status(doctor.check_data(smoke(), probes, True), "dtd reachable")
    assert state == FAIL and fix.endswith("or put it in resources/tfds/downloads/manual")
    answers[url] = (True, "HTTP 200, 625 MB")
    assert status(doctor.check_data(smoke(), probes, True), "dtd reachable")[0] == OK
    assert status(doctor.check_data(smoke(), probes, False), "dtd reachable")[0] == SKIP
    # Already built, or prepared by TFDS: nothing to download.
    for there in (manifest, "resources/tfds/dtd"):
        assert status(doctor.check_data(smoke(), fake({there: ""}), True), "dtd")[0] == OK
    state, fix = status(doctor.check_data(smoke(), fake(module_dir=lambda name: None), True), "dtd")
    assert state == WARN and "envs/data.yaml" in fix


def test_a_local_folder_must_exist():
    config = copy.deepcopy(SMOKE)
    config["datasets"]["dtd"] = {"source": "local", "path": "data/dtd", "classes": 47}
    state, fix = status(doctor.check_data(plan_of(config), fake(), False), "dtd")
    assert state == FAIL and fix == "put the dataset at data/dtd, or correct datasets.dtd.path"
    assert status(doctor.check_data(plan_of(config), fake({"data/dtd": ""}), False), "dtd")[0] == OK


# The device test: where it runs, and what its answer means.


def probe_answer(**found) -> str:
    base = {"node": "gpu07", "torch": "2.14.1", "cuda_build": "13.0", "cuda": True, "count": 1, "name": "H100"}
    return "srun: job 12 queued\n" + doctor.PROBE_MARK + json.dumps({**base, **found}) + "\n"


def test_the_device_test_runs_here_and_each_failure_names_its_fix():
    calls = []

    def run(cmd: Sequence[str], timeout: float) -> Result:
        calls.append(list(cmd))
        return Result(0, answer)

    probes = fake(run=run)
    answer = probe_answer(bf16=True, compile={"reduce-overhead": True})
    lines = doctor.check_device(smoke(), LOCAL, probes)
    assert calls == [
        ["/env/bin/python", "-m", "peftstudy.cli", "doctor", "--probe-device", "--compile=reduce-overhead"]
    ]
    assert [(line.name, line.status) for line in lines] == [("CUDA", OK), ("bf16", OK), ("compile reduce-overhead", OK)]
    answer = probe_answer(cuda=False)
    state, fix = status(doctor.check_device(smoke(), LOCAL, probes), "CUDA")
    assert state == FAIL and "NVIDIA driver" in fix
    answer = probe_answer(bf16="no native bf16", compile={"reduce-overhead": "InductorError: no compiler"})
    lines = doctor.check_device(smoke(), LOCAL, probes)
    state, fix = status(lines, "bf16")
    assert state == FAIL and fix.startswith("set recipe.precision: fp32 in the study")
    state, fix = status(lines, "compile reduce-overhead")
    assert state == FAIL and fix.startswith("set recipe.compile: off")
    answer = "Traceback ...\nModuleNotFoundError: No module named 'torch'\n"
    state, fix = status(doctor.check_device(smoke(), LOCAL, probes), "device test")
    assert state == FAIL


def test_on_slurm_the_device_test_is_one_job_on_the_profiles_partition_with_its_account_and_the_gpus_jobs_ask():
    calls = []

    def run(cmd: Sequence[str], timeout: float) -> Result:
        calls.append((list(cmd), timeout))
        return Result(0, probe_answer(bf16=True, compile={"reduce-overhead": True}))

    lines = doctor.check_device(smoke(), SLURM, fake(run=run))
    [(cmd, timeout)] = calls
    assert cmd[0] == "srun" and timeout == doctor.PROBE_WAIT_S
    assert {"--partition=gpu", "--account=lab", "--gpus=1", "--constraint=h100", "--immediate=900"} <= set(cmd)
    assert cmd[cmd.index("/env/bin/python") :][-2:] == ["--probe-device", "--compile=reduce-overhead"]
    assert all(line.status == OK for line in lines)
    # With conda envs, a test run by the doctor's own Python says which it tested.
    conda = Profile(SLURM.path, {**SLURM.settings, "software-deployment-method": "conda"})
    lines = doctor.check_device(smoke(), conda, fake(run=run, python=sys.executable))
    state, fix = status(lines, "environment")
    assert state == WARN and "--conda-create-envs-only" in fix
    assert "environment" not in {line.name for line in doctor.check_device(smoke(), conda, fake(run=run))}


def test_a_study_without_gpus_needs_no_device_test_and_one_without_compile_or_bf16_checks_neither():
    config = copy.deepcopy(SMOKE)
    config["resources"] = {}
    assert [line.status for line in doctor.check_device(plan_of(config), LOCAL, fake())] == [OK]
    config = copy.deepcopy(SMOKE)
    config["experiments"]["vtab"]["recipe"].update(precision="fp32", compile="off")
    needs = doctor.device_needs(plan_of(config))
    assert needs == {"gpus": 1, "cuda": True, "bf16": False, "compile": []}


def test_the_device_tests_bf16_and_compile_steps_report_a_failure_as_its_message():
    """The steps the device test runs on the GPU, here on the CPU: a mode torch.compile does not know is its error."""
    import torch

    assert doctor._bf16_matmul(torch, "cpu") is True
    assert doctor._compiled_step("no-such-mode", "cpu").startswith("RuntimeError: Unrecognized mode=no-such-mode")


@pytest.mark.slow
def test_the_device_tests_compiled_step_matches_eager_on_the_cpu():
    """The compiled step as the engine compiles it (inductor, ~25 CPU-s here) agrees with eager."""
    assert doctor._compiled_step("default", "cpu") is True


# Disk, Slurm, envs.


def test_free_disk_below_the_studys_outputs_fails_with_how_much_to_free():
    from peftstudy.plan.cost import disk_need

    need = disk_need(smoke(), {"vtab": 344_000_000}, jobs_at_once=2).total  # the profile's cores, the weights' size
    assert status(doctor.check_disk(smoke(), LOCAL, fake(free_bytes=lambda path: need)), "free space")[0] == OK
    state, fix = status(doctor.check_disk(smoke(), LOCAL, fake(free_bytes=lambda path: need - 10**9)), "free space")
    assert state == FAIL and fix.startswith("free 1.0 GB there")


def test_the_disk_need_grows_with_the_jobs_at_once_and_counts_each_split_cache():
    from peftstudy.plan.cost import disk_need

    plan = smoke()
    one, four = disk_need(plan, jobs_at_once=1), disk_need(plan, jobs_at_once=4)
    # DTD: 800 + 200 + 1,000 + 1,880 images of 224 x 224 x 3 bytes.
    assert one.items["split caches"] == (800 + 200 + 1_000 + 1_880) * 224 * 224 * 3
    # The largest job: full fine-tuning's two grid points at once, each with weights and AdamW's two moments.
    assert one.items["epoch checkpoints in flight"] == 2 * 3 * 344_000_000
    assert four.items["epoch checkpoints in flight"] > one.items["epoch checkpoints in flight"]
    assert not one.unsized
    # A dataset of unknown size is named, not guessed.
    config = copy.deepcopy(SMOKE)
    config["datasets"]["dtd"] = {"source": "local", "path": "data/textures", "classes": 47}
    state, _ = status(doctor.check_disk(plan_of(config), LOCAL, fake()), "not sized")
    assert state == WARN and disk_need(plan_of(config)).unsized == ["dtd"]


def sinfo(rows: str, sacctmgr: str = "lab\n", sacct: Result | None = None):
    def run(cmd: Sequence[str], timeout: float) -> Result:
        if cmd[0] == "sinfo":
            return Result(0, rows)
        if cmd[0] == "sacctmgr":
            assert "user=alice" in cmd
            return Result(0, sacctmgr)
        if cmd[0] == "sacct" and sacct is not None:
            return sacct
        raise AssertionError(cmd)

    return fake(run=run)


def test_slurm_partition_account_and_gpu_gres_each_pass_or_fail_with_the_fix():
    rows = "debug*|up|(null)|1\ngpu|up|gpu:a100:4(S:0-1)|8\n"
    lines = doctor.check_slurm(smoke(), SLURM, sinfo(rows))
    assert {line.name: line.status for line in lines} == {
        "executor plugin": OK,
        "partition": OK,
        "GPU gres": OK,
        "account": OK,
        "job status": OK,
    }
    state, fix = status(doctor.check_slurm(smoke(), SLURM, sinfo("debug*|up|(null)|1\n")), "partition")
    assert state == FAIL and fix == "set default-resources: slurm_partition: <one of debug> in slurm/config.yaml"
    cpu_only = Profile(SLURM.path, {**SLURM.settings, "default-resources": {"slurm_partition": "debug"}})
    state, fix = status(doctor.check_slurm(smoke(), cpu_only, sinfo(rows)), "GPU gres")
    assert state == FAIL and "gres gpu" in fix
    state, fix = status(doctor.check_slurm(smoke(), SLURM, sinfo(rows, sacctmgr="other\n")), "account")
    assert state == FAIL and fix == "set slurm_account to one of other in slurm/config.yaml"
    no_plugin = fake(module_dir=lambda name: None, run=sinfo(rows).run)
    state, fix = status(doctor.check_slurm(smoke(), SLURM, no_plugin), "executor plugin")
    assert state == FAIL and fix == "pip install -e '.[slurm]'"


def test_sacct_polling_without_accounting_fails_and_squeue_is_the_fix():
    profile = Profile(SLURM.path, {k: v for k, v in SLURM.settings.items() if k != "slurm-status-command"})
    disabled = Result(1, "", "Slurm accounting storage is disabled")
    state, fix = status(doctor.check_slurm(smoke(), profile, sinfo("gpu|up|gpu:1|1\n", sacct=disabled)), "job status")
    assert state == FAIL and fix == "add `slurm-status-command: squeue` to slurm/config.yaml"
    assert (
        status(doctor.check_slurm(smoke(), profile, sinfo("gpu|up|gpu:1|1\n", sacct=Result(0))), "job status")[0] == OK
    )


def test_the_gpus_of_a_node_are_read_from_sinfos_gres():
    gres = ("(null)", "gpu:1", "gpu:a100:4(S:0-1)", "tmp:1,gpu:h100:8", "gpu:a100:2,gpu:v100:1")
    assert [doctor.gres_gpus(g) for g in gres] == [0, 1, 4, 8, 3]


def test_without_conda_the_jobs_packages_must_be_in_this_environment():
    assert status(doctor.check_envs(LOCAL, fake(), False), "this environment")[0] == OK
    no_report = fake(module_dir=lambda name: None if name == "papermill" else f"/env/{name}")
    state, fix = status(doctor.check_envs(LOCAL, no_report, False), "this environment")
    assert state == FAIL and fix == "pip install -e '.[all]' in this environment (the jobs run in it)"


def test_conda_envs_parse_need_conda_and_resolve_when_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    conda = Profile("slurm/config.yaml", {"software-deployment-method": "conda"})
    state, fix = status(doctor.check_envs(conda, fake(), False), "conda")
    assert state == FAIL and "Miniforge" in fix
    broken = tmp_path / "broken.yaml"
    broken.write_text("dependencies:\n  - pip:\n      - -e ..[gpu_extras]\n")
    with_conda = fake(which=lambda name: f"/opt/{name}" if name == "mamba" else None)
    lines = doctor.check_envs(conda, with_conda, False, [*doctor.env_files(), str(broken)])
    assert [line.status for line in lines if line.name.startswith("envs/")] == [OK, OK, OK]
    state, fix = status(lines, str(broken))
    assert state == FAIL and fix == "use extras of pyproject.toml (all, data, report, slurm, test, train, workflow)"
    calls = []

    def run(cmd: Sequence[str], timeout: float) -> Result:
        calls.append(cmd)
        return Result(1, "", "LibMambaUnsatisfiableError: python=3.11.7") if "train" in cmd[-1] else Result(0)

    lines = doctor.check_envs(conda, replace(with_conda, run=run), True)
    assert calls[0][:6] == ["mamba", "env", "create", "--dry-run", "--file", "envs/data.yaml"]
    assert status(lines, "envs/train.yaml") == (FAIL, "fix the pins in envs/train.yaml")
    assert status(lines, "envs/data.yaml")[0] == OK


# The whole preflight.


def test_a_config_error_is_the_only_line_and_names_the_key():
    lines = doctor.doctor([str(REPO / "studies/smoke.yaml"), str(REPO / "studies/vtab1k.yaml")], LOCAL, fake())
    # vtab1k.yaml's dtd (from the archive) merged over the smoke study's (from TFDS): a dataset of two sources.
    assert len(lines) == 1 and lines[0].status == FAIL
    assert lines[0].detail == "datasets.dtd: vtab_task belongs to another source than archive"


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run(
        [sys.executable, "-m", "peftstudy.cli", "doctor", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_the_smoke_study_passes_the_preflights_cpu_checks_here():
    """Here: no GPU and no network; everything else of studies/smoke.yaml must pass (WARN: the backbone's download
    is not pinned yet, allowed in the smoke study; TFDS is in the data env)."""
    proc = cli("--configfile", "studies/smoke.yaml", "--skip", "device", "network")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[FAIL]" not in proc.stdout and "[ OK ] config: studies/smoke.yaml: study 'smoke'" in proc.stdout


def test_the_preflight_exits_non_zero_on_a_failure_and_prints_each_fix():
    proc = cli("--configfile", "studies/vtab1k.yaml", "--skip", "device", "network", "disk")
    assert proc.returncode == 1
    assert "[FAIL] data: archives.vtab_1k" in proc.stdout and "fix: put the file at resources/downloads" in proc.stdout


def test_the_smoke_study_plans_its_jobs_in_a_dry_run(tmp_path):
    wf = copy_repo(tmp_path)
    planned = [rule for rule, _ in jobs(wf.snakemake("-n", "--configfile", "studies/smoke.yaml").stdout)]
    assert planned.count("tune") == 3  # one job per method: its two grid points together
    assert {"source_local", "fetch_backbone", "prepare", "select", "tables", "report"} <= set(planned)


def test_the_smoke_studys_report_sets_the_authors_dtd_numbers_and_choices_beside_ours():
    """The report's tables, as the tables stage builds them, for the smoke study's plan: each method on DTD with the
    authors' test top-1 (authors_vtab1k.csv) and their chosen grid point (authors_vtab1k_selection.csv)."""
    import pandas as pd

    from peftstudy.report.tables import read_authors, selection_table, vtab_table

    plan = smoke()
    context = plan.report.report_context()
    ours = pd.DataFrame(
        [
            {"experiment": "vtab", "dataset": "dtd", "method": m, "test_top1": top1, "test_top1_std": 0.5, "seeds": 2,
             "trainable_params": 1, "gp": "x", "status": "ok"}
            for m, top1 in (("linear", 66.0), ("lora", 70.0), ("full", 50.0))
        ]
    )  # fmt: skip
    table = vtab_table(ours, context, read_authors(REPO / "report/data/authors_vtab1k.csv")).set_index("method")
    assert table.loc[["linear", "lora", "full"], "authors_top1"].tolist() == [65.7, 69.0, 48.2]
    assert table.loc["full", "diff"] == pytest.approx(1.8)
    # Their choice on DTD is one of our two points per method, so the selections can agree.
    grid = {m: list(plan.grids["vtab", m].values()) for m in ("linear", "lora", "full")}
    theirs = read_authors(REPO / "report/data/authors_vtab1k_selection.csv")
    tune = pd.DataFrame(
        [
            {"experiment": "vtab", "dataset": "dtd", "method": m, "gp": "g", "hp": json.dumps(grid[m][0]),
             "val_top1": 60.0, "selected": True}
            for m in grid
        ]
    )  # fmt: skip
    chosen = selection_table(tune, context, theirs)
    assert chosen["task"].tolist() == ["dtd"] * 3 and chosen["agree"].tolist() == [True] * 3


# On the one-node Slurm of CI.


@pytest.mark.slow
def test_on_slurm_the_device_test_is_a_job_on_the_partition_and_a_node_without_cuda_fails(slurm, tmp_path):  # noqa: F811
    profile = yaml.safe_load((REPO / "slurm/config.yaml").read_text())
    del profile["software-deployment-method"], profile["configfile"]
    profile["default-resources"] = {"slurm_partition": "debug"}
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm/config.yaml").write_text(yaml.safe_dump(profile))
    before = slurm_job_ids()
    proc = cli("--configfile", "studies/smoke.yaml", "--profile", str(tmp_path / "slurm"), "--skip", "network")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    for ok in ("slurm: partition: debug: up", "slurm: GPU gres: debug: up to 1 GPU(s) a node"):
        assert f"[ OK ] {ok}" in out
    # The CI node's GPU is a fake gres: Slurm gave the job a device (CUDA_VISIBLE_DEVICES) but CUDA finds none.
    assert f"[FAIL] device: CUDA: no CUDA device on {os.uname().nodename}" in out and "CUDA_VISIBLE_DEVICES=0" in out
    assert "fix: check the node's NVIDIA driver" in out
    new = {job: name for job, name in slurm_jobs().items() if job not in before}
    assert list(new.values()) == [doctor.PROBE_JOB["name"]]
    # A partition that is not there fails, naming the ones that are.
    profile["default-resources"] = {"slurm_partition": "h100"}
    (tmp_path / "slurm/config.yaml").write_text(yaml.safe_dump(profile))
    proc = cli("--configfile", "studies/smoke.yaml", "--profile", str(tmp_path / "slurm"), "--skip", "device")
    assert proc.returncode == 1 and "[FAIL] slurm: partition: partition 'h100' does not exist" in proc.stdout
    assert "slurm_partition: <one of debug>" in proc.stdout


def slurm_jobs() -> dict[str, str]:
    out = subprocess.run(["squeue", "-t", "all", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout
    return dict(line.split(maxsplit=1) for line in out.splitlines() if line.strip())


def slurm_job_ids() -> set[str]:
    return set(slurm_jobs())
