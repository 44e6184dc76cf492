"""`peftstudy doctor`: a preflight of a study and a profile, before its GPU-hours are spent (issue 26).

Each check is a small function of the composed study (its :class:`Plan`), the profile and a set of probes (the
commands, the network, the file system and the device test it consults), and returns the lines of a checklist:
OK, WARN, FAIL (with the fix) or SKIP. Tests give the checks fake probes; :data:`REAL` runs the real ones.

What is checked: the config composes and passes its checks; CUDA, bf16 and (where a recipe compiles) torch.compile
work where the training jobs run (on Slurm, as one small job on the profile's partition with its account and the
study's GPU request; locally, in a subprocess); weights and data are reachable (a local file there, a URL
answering a time-limited HEAD), pinned, and their sums right where they are already on disk; the free disk covers
the study's outputs (:func:`peftstudy.plan.cost.disk_need`); the Slurm partition, account and GPU gres exist; the
conda envs parse and conda is there (`--build-envs` resolves them for real). Nothing is downloaded.

Torch is imported only by the device test, which runs in its own process (`peftstudy doctor --probe-device`).
"""

from __future__ import annotations

import getpass
import glob
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from peftstudy.data.fetch import is_local
from peftstudy.io import sha256_file

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
# A line of the device test's output that carries its result (srun and the node may print other lines).
PROBE_MARK = "PEFTSTUDY_DEVICE "
DEFAULT_CONFIG = "config.yaml"
HEAD_TIMEOUT = 10.0
# The device test on Slurm: the job's limits, and how long it may wait in the queue (srun --immediate: Slurm
# withdraws it then, so no job is left pending); the doctor waits that long and the test's own run on top.
PROBE_JOB = {"time": "10", "mem": "4000", "name": "peftstudy-doctor"}
PROBE_QUEUE_S = 900
PROBE_WAIT_S = PROBE_QUEUE_S + 600.0


@dataclass(frozen=True)
class Check:
    """One line of the checklist."""

    group: str
    name: str
    status: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Result:
    """What a probed command returned."""

    returncode: int
    stdout: str = ""
    stderr: str = ""


def _run(cmd: Sequence[str], timeout: float) -> Result:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return Result(127, "", f"{cmd[0]}: command not found")
    except subprocess.TimeoutExpired as err:  # its output comes as bytes, text=True or not
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout or ""
        return Result(124, out, f"{shlex.join(cmd)}: no answer within {timeout:.0f} s")
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _head(url: str, timeout: float) -> tuple[bool, str]:
    """Whether `url` answers a HEAD request (some servers refuse HEAD: a ranged GET of one byte then)."""
    for request in (
        urllib.request.Request(url, method="HEAD"),
        urllib.request.Request(url, headers={"Range": "bytes=0-0"}),
    ):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                size = response.headers.get("Content-Length")
                more = f", {int(size) / 1e6:,.0f} MB" if size and request.method == "HEAD" else ""
                return True, f"HTTP {response.status}{more}"
        except urllib.error.HTTPError as err:
            answer = f"HTTP {err.code} {err.reason}"
            if err.code not in (403, 405, 501):  # refused HEAD: try the ranged GET
                return False, answer
        except (urllib.error.URLError, OSError) as err:
            return False, str(getattr(err, "reason", err))
    return False, answer


def _module_dir(name: str) -> str | None:
    """The folder of an installed package, found without importing it (None: not installed)."""
    spec = importlib.util.find_spec(name)
    return os.path.dirname(spec.origin) if spec and spec.origin else None


@dataclass(frozen=True)
class Probes:
    """Everything the checks consult outside the config. Replace any of them to test a check."""

    run: Callable[[Sequence[str], float], Result] = _run
    which: Callable[[str], str | None] = shutil.which
    head: Callable[[str, float], tuple[bool, str]] = _head
    sha256: Callable[[str], str] = sha256_file
    exists: Callable[[str], bool] = os.path.exists
    size: Callable[[str], int] = os.path.getsize
    free_bytes: Callable[[str], int] = lambda path: shutil.disk_usage(path).free
    read: Callable[[str], str] = lambda path: Path(path).read_text()
    find: Callable[[str], list[str]] = lambda pattern: sorted(glob.glob(pattern, recursive=True))
    module_dir: Callable[[str], str | None] = lambda name: _module_dir(name)
    python: str = sys.executable
    user: Callable[[], str] = getpass.getuser


REAL = Probes()


# The study and the profile.


@dataclass(frozen=True)
class Profile:
    """A Snakemake profile's settings that matter here."""

    path: str
    settings: Mapping[str, Any]

    @property
    def slurm(self) -> bool:
        return self.settings.get("executor") == "slurm"

    @property
    def resources(self) -> Mapping[str, Any]:
        return self.settings.get("default-resources") or {}

    @property
    def conda(self) -> bool:
        return self.settings.get("software-deployment-method") in ("conda", ["conda"])


def load_profile(name: str) -> Profile:
    """A profile by folder (`slurm`, `workflow/profiles/default`, a path) or by its config file, as Snakemake
    finds it from the repository root."""
    path = Path(name)
    candidates = [path] if path.suffix in (".yaml", ".yml") else [path / "config.yaml", path / "profile.yaml"]
    candidates += [Path("workflow/profiles") / name / "config.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return Profile(str(candidate), yaml.safe_load(candidate.read_text()) or {})
    raise ValueError(f"--profile {name}: no config.yaml there (looked for {', '.join(map(str, candidates))})")


def config_files(args_files: Sequence[str] | None, profile: Profile) -> list[str]:
    """The study configs: --configfile, else the profile's `configfile`, else the embedded study."""
    if args_files:
        return list(args_files)
    given = profile.settings.get("configfile")
    return [given] if isinstance(given, str) else list(given or [DEFAULT_CONFIG])


# Checks. Each returns the checklist lines of its group.


def check_config(files: Sequence[str]) -> tuple[list[Check], Any]:
    """The config composes, passes its schema and the plan's cross-checks; returns its plan (None if not)."""
    from peftstudy.plan.cost import load_config
    from peftstudy.plan.jobs import Plan

    name = " ".join(files)
    try:
        plan = Plan.of(load_config(files))
    except OSError as err:
        return [Check("config", name, FAIL, str(err), "give the study config's path (studies/*.yaml)")], None
    except (ValueError, yaml.YAMLError) as err:
        return [Check("config", name, FAIL, str(err), "correct the key (or the line) the message names")], None
    exps = plan.experiments
    methods = sorted({m for exp in exps.values() for m in exp["methods"]})
    detail = f"study {plan.config['study']!r}: {len(exps)} experiment(s), "
    detail += f"{len(plan.report.report_datasets())} dataset(s), "
    detail += f"methods {', '.join(methods)}"
    return [Check("config", name, OK, detail)], plan


def device_needs(plan: Any) -> dict[str, Any]:
    """What the training jobs ask of a GPU: how many per job, bf16 (precision auto or bf16 on a GPU), the compile
    modes of the recipes that compile."""
    recipes = [exp["recipe"] for exp in plan.experiments.values()]
    gpus = max(
        [plan.resource_spec(kind, name)["gpu"] for name in plan.experiments for kind in ("tune", "final")]
        + [plan.resource_spec("robustness", plan.analysis.robustness_experiment())["gpu"] if plan.robustness else 0]
    )
    return {
        "gpus": gpus,
        "cuda": gpus > 0 or str(plan.config.get("device", "auto")).startswith("cuda"),
        "bf16": any(r.get("precision", "auto") in ("auto", "bf16") for r in recipes),
        "compile": sorted({r["compile"] for r in recipes if r.get("compile", "off") != "off"}),
    }


def read_probe(output: str) -> dict[str, Any] | None:
    """The device test's result in `output`, or None if it printed none."""
    for line in reversed(output.splitlines()):
        if line.startswith(PROBE_MARK):
            return json.loads(line[len(PROBE_MARK) :])
    return None


def device_checks(found: dict[str, Any] | None, needs: Mapping[str, Any], where: str, failure: str) -> list[Check]:
    """The checklist of one device test's result (`found`; None with `failure` when it printed none)."""
    rerun = "run the doctor again"
    if found is None:
        return [Check("device", "device test", FAIL, f"{where}: no result: {failure.strip()[-800:]}", rerun)]
    node = f"on {found['node']} (torch {found['torch']}, CUDA build {found['cuda_build']})"
    if not found["cuda"]:
        fix = (
            "check the node's NVIDIA driver (nvidia-smi) and that this environment's torch is a CUDA build "
            "(pip install -e '.[train]' installs one); on Slurm, that the partition's nodes have GPUs"
        )
        return [Check("device", "CUDA", FAIL, f"no CUDA device {node}; {found.get('error', '')}".rstrip("; "), fix)]
    lines = [Check("device", "CUDA", OK, f"{found['count']} x {found['name']} {node}")]
    if found["count"] < needs["gpus"]:
        fix = "ask for fewer GPUs per job (resources.<tune|final>.gpu) or for nodes with more"
        lines.append(Check("device", "GPUs", FAIL, f"{found['count']} visible, jobs ask for {needs['gpus']}", fix))
    if needs["bf16"]:
        if found["bf16"] is True:
            lines.append(Check("device", "bf16", OK, "bf16 autocast matmul agrees with fp32"))
        else:
            fix = "set recipe.precision: fp32 in the study (slower), or run on GPUs with bf16 (Ampere or newer)"
            lines.append(Check("device", "bf16", FAIL, str(found["bf16"]), fix))
    for mode, outcome in found.get("compile", {}).items():
        if outcome is True:
            lines.append(Check("device", f"compile {mode}", OK, "a compiled step matches eager"))
        else:
            fix = f"set recipe.compile: off in the study (eager; the results differ by rounding only), or fix: {mode}"
            lines.append(Check("device", f"compile {mode}", FAIL, str(outcome)[-800:], fix))
    return lines


def probe_command(python: str, needs: Mapping[str, Any]) -> list[str]:
    """The device test, run by `python` (this environment's, or the one the jobs use)."""
    modes = [f"--compile={mode}" for mode in needs["compile"]]
    return [python, "-m", "peftstudy.cli", "doctor", "--probe-device", *modes]


def srun_command(profile: Profile, needs: Mapping[str, Any], python: str) -> list[str]:
    """The device test as one small Slurm job: the profile's partition, account and extra flags, the study's GPU
    request (`--gpus`, as the executor plugin sends it)."""
    res = profile.resources
    cmd = ["srun", f"--job-name={PROBE_JOB['name']}", f"--time={PROBE_JOB['time']}", f"--mem={PROBE_JOB['mem']}"]
    cmd += [f"--immediate={PROBE_QUEUE_S}"]
    cmd += [f"--partition={res['slurm_partition']}"] if res.get("slurm_partition") else []
    cmd += [f"--account={res['slurm_account']}"] if res.get("slurm_account") else []
    cmd += [f"--gpus={needs['gpus']}"] if needs["gpus"] else []
    cmd += shlex.split(str(res.get("slurm_extra", "")).strip("'\""))
    return [*cmd, *probe_command(python, needs)]


def check_device(plan: Any, profile: Profile, probes: Probes, wait_s: float = PROBE_WAIT_S) -> list[Check]:
    """CUDA, bf16 and compile where the training jobs run: a Slurm job on the profile's partition, else here."""
    needs = device_needs(plan)
    if not needs["cuda"]:
        return [Check("device", "GPU", OK, "the study asks for no GPU (resources.*.gpu 0, device not cuda)")]
    if profile.slurm:
        cmd = srun_command(profile, needs, probes.python)
        where = f"Slurm job `{shlex.join(cmd)}`"
    else:
        cmd, where = probe_command(probes.python, needs), "this machine"
    result = probes.run(cmd, wait_s)
    out = result.stdout + "\n" + result.stderr
    lines = device_checks(read_probe(result.stdout), needs, where, f"exit {result.returncode}: {out}")
    if profile.conda and probes.python == sys.executable:
        detail = f"the test ran {probes.python}; the jobs run in the conda env of envs/train.yaml"
        fix = (
            "to test that env: snakemake --profile <this one> --conda-create-envs-only, then --python "
            ".snakemake/conda/<its hash>/bin/python"
        )
        lines.append(Check("device", "environment", WARN, detail, fix))
    return lines


def check_source(
    group: str, name: str, url: str, sha256: str | None, key: str, allow_unpinned: bool, probes: Probes, net: bool
) -> list[Check]:
    """A file to fetch: pinned, reachable, and where it is already here, its sum right."""
    lines = []
    if sha256 is None:
        fix = f"fetch it once (its sum is printed), then pin it: {key}.sha256: <that sum>"
        status = WARN if allow_unpinned else FAIL
        why = "allow_unpinned: true, so it is used unpinned" if allow_unpinned else "refused unless allow_unpinned"
        lines.append(Check(group, f"{name} pinned", status, f"{key}.sha256 is null: {why}", fix))
    else:
        lines.append(Check(group, f"{name} pinned", OK, f"{key}.sha256 {sha256[:12]}..."))
    if is_local(url):
        path = url.removeprefix("file://")
        if not probes.exists(path):
            fix = f"put the file at {path}, or set {key}.url to where it is (a path or a URL)"
            return [*lines, Check(group, f"{name} reachable", FAIL, f"{path}: no such file", fix)]
        actual = probes.sha256(path)
        if sha256 is None:  # the exact line to pin
            fix = f"if it is the file you mean, pin it: {key}.sha256: {actual}"
            return [*lines[:-1], replace(lines[-1], fix=fix), Check(group, f"{name} reachable", OK, f"{path} is here")]
        if actual != sha256:
            fix = f"the file is not the pinned one: download it again, or correct {key}.sha256"
            return [*lines, Check(group, f"{name} sha256", FAIL, f"{path}: sha256 {actual}, pinned {sha256}", fix)]
        return [*lines, Check(group, f"{name} sha256", OK, f"{path} matches its pin")]
    if not net:
        return [*lines, Check(group, f"{name} reachable", SKIP, f"{url}: not checked (--skip network)")]
    ok, answer = probes.head(url, HEAD_TIMEOUT)
    if not ok:
        fix = f"check the network and the URL; or download it by hand and set {key}.url to its path"
        return [*lines, Check(group, f"{name} reachable", FAIL, f"{url}: {answer}", fix)]
    return [*lines, Check(group, f"{name} reachable", OK, f"{url}: {answer}")]


def fetched_sum(checksum_file: str, probes: Probes) -> str | None:
    """The sum a fetch rule recorded beside its download (sha256sum's format), if it ran."""
    if not probes.exists(checksum_file):
        return None
    return probes.read(checksum_file).split()[0]


def safetensors_metadata(path: str) -> dict[str, Any]:
    """The metadata fetch-backbone wrote into converted weights (source and its sha256), read without torch."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    packed = header.get("__metadata__", {}).get("peftstudy")
    return json.loads(packed) if packed else {}


def check_weights(
    plan: Any, probes: Probes, net: bool, metadata: Callable[[str], dict] = safetensors_metadata
) -> list[Check]:
    """Each backbone an experiment trains: its weights here with their sum right, or their source pinned and
    reachable."""
    from peftstudy.plan import study

    allow = bool(plan.config.get("allow_unpinned", False))
    used = {plan.experiments[name].get("backbone") or "backbone" for name in plan.experiments}
    lines: list[Check] = []
    for name in sorted(used):
        spec = plan.all_backbones[name]
        key = "backbone" if name == "backbone" else f"backbones.{name}"
        weights, source = spec["weights"], spec.get("source")
        if spec["pretrain"]:
            lines.append(Check("weights", key, OK, "pretrained by the study itself"))
        elif probes.exists(weights):
            lines.append(_present_weights(plan, key, spec, probes, metadata))
        elif source is None:
            fix = f"put the weights at {weights} (the config's {key}.weights)"
            lines.append(Check("weights", key, FAIL, f"{weights}: no such file, and no source to fetch it", fix))
        elif study.fetched_archive(source["url"]):
            archive = study.fetched_archive(source["url"])
            lines.append(Check("weights", key, OK, f"fetched as archives.{archive} (checked under data)"))
        else:
            lines += check_source("weights", key, source["url"], source["sha256"], f"{key}.source", allow, probes, net)
    return lines


def _present_weights(
    plan: Any, key: str, spec: Mapping[str, Any], probes: Probes, metadata: Callable[[str], dict]
) -> Check:
    """Weights already here: their own pinned sum, else the sum of the download they were converted from (which
    fetch-backbone records in them) against the source's pin."""
    weights, source = spec["weights"], spec.get("source")
    if spec["sha256"]:
        actual = probes.sha256(weights)
        if actual != spec["sha256"]:
            fix = f"remove {weights} so that it is fetched again, or correct {key}.sha256"
            return Check("weights", f"{key} sha256", FAIL, f"{weights}: sha256 {actual}, pinned {spec['sha256']}", fix)
        return Check("weights", f"{key} sha256", OK, f"{weights} matches its pin")
    if source is None:  # the plan refuses this config (study._check_weights_pinned); kept for a direct call
        return Check("weights", key, FAIL, f"{weights}: no sha256 and no source", f"pin {key}.sha256")
    pinned = source["sha256"] or _archive_sum(plan, source["url"])
    made_from = metadata(weights).get("source_sha256")
    if pinned and made_from != pinned:
        fix = f"remove {weights} (converted from another download) so that it is fetched again"
        return Check("weights", key, FAIL, f"{weights} was converted from sha256 {made_from}, pinned {pinned}", fix)
    if pinned:
        return Check("weights", key, OK, f"{weights}, converted from the pinned download")
    fix = f"pin {key}.source.sha256: {made_from}"
    status = WARN if plan.config.get("allow_unpinned", False) else FAIL
    return Check("weights", key, status, f"{weights}, converted from an unpinned download", fix)


def _archive_sum(plan: Any, url: str) -> str | None:
    from peftstudy.plan import study

    archive = study.fetched_archive(url)
    return plan.config["archives"][archive]["sha256"] if archive else None


def used_datasets(plan: Any) -> list[str]:
    """Every dataset a job of the study reads: trained, tuned (folds), tested, or pretrained on."""
    names = [f for d in plan.report.report_datasets() for f in plan.train.tuning_sets(d)]
    if plan.config["backbone"]["pretrain"]:
        names.append(plan.config["pretrain"]["dataset"])
    return list(dict.fromkeys(names))


def check_data(plan: Any, probes: Probes, net: bool) -> list[Check]:
    """Each dataset's source: archives pinned, reachable and (fetched already) their sums right; local and
    ImageNet folders there; TFDS builds noted (TFDS checks its own downloads)."""
    from peftstudy.plan import sources
    from peftstudy.plan.cost import summarise
    from peftstudy.plan.sources.archive import archive_checksum

    allow = bool(plan.config.get("allow_unpinned", False))
    lines: list[Check] = []
    by_archive: dict[str, list[str]] = {}
    for name in used_datasets(plan):
        spec = plan.datasets[name]
        source = sources.of(spec)
        for archive in source.archives(spec):
            by_archive.setdefault(archive, []).append(name)
        if source.doctor:
            module, _, function = source.doctor.partition(":")
            lines += getattr(importlib.import_module(module), function)(plan, name, probes, net)
    archives = plan.config.get("archives", {})
    for archive, names in by_archive.items():
        spec, key = archives[archive], f"archives.{archive}"
        label = f"{key} ({summarise(names, 3)})"
        recorded = fetched_sum(archive_checksum(archive), probes)
        if recorded is None:
            lines += check_source("data", label, spec["url"], spec["sha256"], key, allow, probes, net)
        elif spec["sha256"] and recorded != spec["sha256"]:
            fix = f"the fetched archive is another file: remove resources/archives/{archive}* to fetch it again"
            lines.append(Check("data", label, FAIL, f"fetched with sha256 {recorded}, pinned {spec['sha256']}", fix))
        elif spec["sha256"]:
            lines.append(Check("data", label, OK, "fetched, and its sum is the pinned one"))
        else:
            fix = f"pin {key}.sha256: {recorded}"
            lines.append(Check("data", label, WARN if allow else FAIL, f"fetched unpinned, sha256 {recorded}", fix))
    return lines


def check_folder(plan: Any, dataset: str, probes: Probes, net: bool) -> list[Check]:
    """A folder the user provides (`path`: a local dataset, a downloaded ImageNet set): there, or what to fix."""
    path = plan.datasets[dataset]["path"]
    if probes.exists(path):
        return [Check("data", dataset, OK, f"{path}: there")]
    return [
        Check(
            "data",
            dataset,
            FAIL,
            f"{path}: no such folder",
            f"put the dataset at {path}, or correct datasets.{dataset}.path",
        )
    ]


def check_tfds(plan: Any, dataset: str, probes: Probes, net: bool) -> list[Check]:
    """A VTAB task from TFDS: built already, or its builder prepared in tfds_data_dir, or the files TFDS will
    download (its registered URLs and sums, read from the installed package) reachable."""
    from peftstudy.plan.defaults import DEFAULTS
    from peftstudy.plan.tasks import task_table

    task = plan.datasets[dataset]["vtab_task"]
    builder = task_table()[task].builder
    name = re.split("[/:]", builder)[0]
    data_dir = plan.config.get("tfds_data_dir", DEFAULTS["tfds_data_dir"])
    if probes.exists(plan.layout.manifest(dataset)):
        return [Check("data", dataset, OK, f"built from TFDS {builder}")]
    if probes.exists(f"{data_dir}/{name}"):
        return [Check("data", dataset, OK, f"TFDS {builder} prepared in {data_dir}")]
    package = probes.module_dir("tensorflow_datasets")
    if package is None:
        detail = f"TFDS {builder}: tensorflow-datasets is not in this environment"
        fix = (
            "the tfds source's job (rule source_local) runs in envs/data.yaml (conda), or pip install "
            "tensorflow-datasets==4.9.6"
        )
        return [Check("data", dataset, WARN, detail, fix)]
    downloads = tfds_downloads(package, name, probes)
    if not downloads:
        return [Check("data", dataset, OK, f"TFDS {builder}: TFDS downloads it and checks its own sums")]
    lines = []
    for url in downloads:
        if not net:
            lines.append(Check("data", f"{dataset} reachable", SKIP, f"{url}: not checked (--skip network)"))
            continue
        ok, answer = probes.head(url, HEAD_TIMEOUT)
        fix = (
            ""
            if ok
            else f"the tfds source's job downloads it where Snakemake runs; or put it in {data_dir}/downloads/manual"
        )
        lines.append(Check("data", f"{dataset} reachable", OK if ok else FAIL, f"TFDS {builder}: {url}: {answer}", fix))
    return lines


def tfds_downloads(package: str, name: str, probes: Probes) -> list[str]:
    """The URLs TFDS registers for a builder: `url_checksums/<name>.txt` or `<name>/checksums.tsv` in its package
    (one file a line: URL, size, sha256, ...)."""
    found = [f"{package}/url_checksums/{name}.txt", *probes.find(f"{package}/**/{name}/checksums.tsv")]
    for path in found:
        if probes.exists(path):
            rows = [line.split() for line in probes.read(path).splitlines()]
            return [row[0] for row in rows if row and row[0].startswith(("http://", "https://"))]
    return []


def check_disk(plan: Any, profile: Profile, probes: Probes) -> list[Check]:
    """The free space where results/ goes against what the study's outputs take (plan.cost.disk_need), with the
    epoch checkpoints of as many training jobs at once as the profile runs."""
    from peftstudy.plan.cost import disk_need, summarise

    sizes = {
        name: probes.size(plan.train.backbone_weights(name))
        for name in plan.experiments
        if probes.exists(plan.train.backbone_weights(name))
    }
    at_once = int(profile.settings.get("jobs") or profile.settings.get("cores") or 1)
    need = disk_need(plan, sizes, at_once)
    folder = plan.layout.root
    while not probes.exists(folder) and folder not in ("", "."):
        folder = os.path.dirname(folder)
    folder = os.path.abspath(folder or ".")
    free = probes.free_bytes(folder)
    parts = ", ".join(f"{kind} {human(size)}" for kind, size in need.items.items() if size)
    detail = f"{human(need.total)} needed ({parts or 'nothing sized'}), {human(free)} free on {folder}"
    lines = []
    if free < need.total:
        fix = f"free {human(need.total - free)} there, or run from a larger disk (results/ is relative)"
        lines.append(Check("disk", "free space", FAIL, detail, fix))
    else:
        lines.append(Check("disk", "free space", OK, detail))
    if need.unsized:
        detail = f"no size known for {summarise(need.unsized)}: their caches are not counted; nor are downloads"
        lines.append(Check("disk", "not sized", WARN, detail))
    return lines


def human(size: int) -> str:
    return f"{size / 1e9:,.1f} GB" if size >= 1e9 else f"{size / 1e6:,.0f} MB"


def check_slurm(plan: Any, profile: Profile, probes: Probes) -> list[Check]:
    """The profile's partition, account and the study's GPU gres on Slurm; the executor plugin; job polling."""
    if not profile.slurm:
        return [Check("slurm", "executor", SKIP, f"{profile.path} runs jobs locally")]
    lines = []
    if probes.module_dir("snakemake_executor_plugin_slurm"):
        lines.append(Check("slurm", "executor plugin", OK, "snakemake-executor-plugin-slurm installed"))
    else:
        fix = "pip install -e '.[slurm]'"
        lines.append(Check("slurm", "executor plugin", FAIL, "snakemake-executor-plugin-slurm missing", fix))
    listed = probes.run(["sinfo", "-h", "-o", "%P|%a|%G|%D"], 60)
    if listed.returncode != 0:
        detail = (listed.stderr or listed.stdout).strip()[-400:]
        fix = "run the doctor on the cluster's login node, where sinfo reaches slurmctld"
        return [*lines, Check("slurm", "sinfo", FAIL, f"sinfo failed: {detail}", fix)]
    partitions: dict[str, list[tuple[str, str]]] = {}
    for row in listed.stdout.splitlines():
        if row.count("|") == 3:
            name, avail, gres, _ = row.split("|")
            partitions.setdefault(name.rstrip("*"), []).append((avail, gres))
    default = next((row.split("|")[0].rstrip("*") for row in listed.stdout.splitlines() if "*|" in row), None)
    partition = profile.resources.get("slurm_partition") or default
    known = ", ".join(sorted(partitions)) or "none"
    if partition not in partitions:
        fix = f"set default-resources: slurm_partition: <one of {known}> in {profile.path}"
        lines.append(Check("slurm", "partition", FAIL, f"partition {partition!r} does not exist", fix))
        return lines
    states = {avail for avail, _ in partitions[partition]}
    status = OK if "up" in states else FAIL
    fix = "" if status == OK else "ask the admins, or choose another partition"
    lines.append(Check("slurm", "partition", status, f"{partition}: {'/'.join(sorted(states))}", fix))
    needs = device_needs(plan)
    if needs["gpus"]:
        most = max(gres_gpus(gres) for _, gres in partitions[partition])
        if most >= needs["gpus"]:
            lines.append(Check("slurm", "GPU gres", OK, f"{partition}: up to {most} GPU(s) a node"))
        else:
            fix = f"choose a partition with GPU nodes (gres gpu) ({known}), or set resources.*.gpu: 0"
            detail = f"{partition}: {most} GPU(s) a node, jobs ask for {needs['gpus']}"
            lines.append(Check("slurm", "GPU gres", FAIL, detail, fix))
    lines += check_account(profile, probes)
    lines += check_status_command(profile, probes)
    return lines


def gres_gpus(gres: str) -> int:
    """The GPUs of a node from sinfo's %G (`gpu:4`, `gpu:a100:4(S:0-1)`, `gpu:2,tmpdisk:100`, `(null)`), of all
    its types together."""
    return sum(int(m[1]) for m in re.finditer(r"gpu(?::[^:,(]+)?:(\d+)", gres))


def check_account(profile: Profile, probes: Probes) -> list[Check]:
    account = profile.resources.get("slurm_account")
    if not account:
        return [Check("slurm", "account", OK, "none set: jobs are submitted with your default account")]
    user = probes.user()
    result = probes.run(["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=account"], 60)
    if result.returncode != 0:
        detail = f"sacctmgr could not check {account!r}: {(result.stderr or result.stdout).strip()[-300:]}"
        fix = "ask your admins whether it exists; without slurmdbd, remove slurm_account (the plugin checks it)"
        return [Check("slurm", "account", FAIL, detail, fix)]
    mine = {line.strip() for line in result.stdout.splitlines() if line.strip()}
    if account in mine:
        return [Check("slurm", "account", OK, f"{account} is one of {user}'s")]
    fix = f"set slurm_account to one of {', '.join(sorted(mine)) or '(none)'} in {profile.path}"
    return [Check("slurm", "account", FAIL, f"{user} has no association with account {account!r}", fix)]


def check_status_command(profile: Profile, probes: Probes) -> list[Check]:
    """Without accounting, the plugin's default sacct polling hangs Snakemake forever (docs/slurm.md §4)."""
    if profile.settings.get("slurm-status-command") == "squeue":
        return [Check("slurm", "job status", OK, "polled with squeue")]
    result = probes.run(["sacct", "-n", "-X", "-o", "JobID", "-S", "now"], 60)
    if result.returncode == 0:
        return [Check("slurm", "job status", OK, "polled with sacct (accounting is on)")]
    detail = f"sacct fails ({(result.stderr or result.stdout).strip()[-200:]}): Snakemake would wait forever"
    return [Check("slurm", "job status", FAIL, detail, f"add `slurm-status-command: squeue` to {profile.path}")]


# What the rules import, by extra (pyproject.toml): data, train, report, workflow.
JOB_MODULES = ("PIL", "sklearn", "torch", "timm", "safetensors", "pandas", "papermill", "snakemake")


def env_files(root: str = "envs") -> list[str]:
    return sorted(str(p) for p in Path(root).glob("*.yaml"))


def check_envs(profile: Profile, probes: Probes, build: bool, files: Sequence[str] | None = None) -> list[Check]:
    """The conda envs the rules run in parse, name this checkout's extras, and conda is there; `build` resolves
    each for real (conda's --dry-run). Without conda, the jobs' packages must be in this environment."""
    if not profile.conda:
        missing = [name for name in JOB_MODULES if not probes.module_dir(name)]
        if missing:
            fix = "pip install -e '.[all]' in this environment (the jobs run in it)"
            return [Check("envs", "this environment", FAIL, f"missing {', '.join(missing)}", fix)]
        return [Check("envs", "this environment", OK, "no conda: the jobs run here, and their packages are here")]
    lines = []
    conda = next((tool for tool in ("mamba", "conda") if probes.which(tool)), None)
    if conda is None:
        fix = "install Miniforge (conda and mamba), or delete software-deployment-method from the profile"
        lines.append(Check("envs", "conda", FAIL, f"{profile.path} builds conda envs, but no conda or mamba", fix))
    else:
        lines.append(Check("envs", "conda", OK, probes.which(conda) or conda))
    extras = _extras()
    for path in files if files is not None else env_files():
        try:
            spec = yaml.safe_load(Path(path).read_text())
            pips = [d for dep in spec["dependencies"] if isinstance(dep, dict) for d in dep.get("pip", [])]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
            lines.append(Check("envs", path, FAIL, f"does not parse as a conda env: {err}", f"fix {path}"))
            continue
        wanted = {e for d in pips if d.startswith("-e ..[") for e in d[len("-e ..[") : -1].split(",")}
        unknown = sorted(wanted - extras)
        if unknown:
            fix = f"use extras of pyproject.toml ({', '.join(sorted(extras))})"
            lines.append(Check("envs", path, FAIL, f"names unknown extras {', '.join(unknown)}", fix))
            continue
        if not build or conda is None:
            lines.append(Check("envs", path, OK, "parses" + ("" if build else " (--build-envs resolves it)")))
            continue
        cmd = [conda, "env", "create", "--dry-run", "--file", path, "--name", f"peftstudy-doctor-{Path(path).stem}"]
        result = probes.run(cmd, 1800)
        if result.returncode == 0:
            lines.append(Check("envs", path, OK, "resolves (conda env create --dry-run)"))
        else:
            detail = (result.stderr or result.stdout).strip()[-800:]
            lines.append(Check("envs", path, FAIL, f"does not resolve: {detail}", f"fix the pins in {path}"))
    return lines


def _extras() -> set[str]:
    import tomllib

    with open("pyproject.toml", "rb") as handle:
        return set(tomllib.load(handle)["project"]["optional-dependencies"])


# The whole preflight.


def doctor(
    files: Sequence[str] | None,
    profile: Profile,
    probes: Probes = REAL,
    skip: Iterable[str] = (),
    build_envs: bool = False,
) -> list[Check]:
    """Every check of the study and the profile, in checklist order."""
    skip = set(skip)
    lines, plan = check_config(config_files(files, profile))
    if plan is None:
        return lines
    net = "network" not in skip
    groups = {
        "device": lambda: check_device(plan, profile, probes),
        "weights": lambda: check_weights(plan, probes, net),
        "data": lambda: check_data(plan, probes, net),
        "disk": lambda: check_disk(plan, profile, probes),
        "slurm": lambda: check_slurm(plan, profile, probes),
        "envs": lambda: check_envs(profile, probes, build_envs),
    }
    for group, run in groups.items():
        lines += [Check(group, "", SKIP, "left out (--skip)")] if group in skip else run()
    return lines


def render(lines: Sequence[Check]) -> str:
    out = []
    for line in lines:
        out.append(f"[{line.status:^4}] {': '.join(filter(None, (line.group, line.name, line.detail)))}")
        if line.fix:
            out.append(f"       fix: {line.fix}")
    counts = {status: sum(line.status == status for line in lines) for status in (OK, WARN, FAIL, SKIP)}
    out.append(", ".join(f"{n} {status}" for status, n in counts.items() if n))
    return "\n".join(out)


def probe_device(compile_modes: Sequence[str]) -> dict[str, Any]:
    """The device test (run in its own process, on the node the jobs land on): CUDA, a bf16 autocast matmul
    against fp32, and a compiled training step of a small MLP against eager, in each mode the study uses."""
    import torch

    found: dict[str, Any] = {
        "node": os.uname().nodename,
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda": torch.cuda.is_available(),
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if not found["cuda"]:
        found["error"] = f"CUDA_VISIBLE_DEVICES={found['visible']}" if found["visible"] is not None else ""
        return found
    found.update(count=torch.cuda.device_count(), name=torch.cuda.get_device_name(0))
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        found["bf16"] = f"{found['name']} has no native bf16 (emulated: far slower than the rates estimated)"
    else:
        found["bf16"] = _bf16_matmul(torch)
    found["compile"] = {mode: _compiled_step(mode) for mode in compile_modes}
    return found


def _bf16_matmul(torch: Any, device: str = "cuda") -> bool | str:
    """A bf16 autocast matmul on the GPU agrees with fp32 to bf16's precision."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(256, 256, device=device, generator=gen)
    b = torch.randn(256, 256, device=device, generator=gen)
    try:
        with torch.autocast(device, dtype=torch.bfloat16):
            low = a @ b
        exact = a @ b
        error = float((low.float() - exact).abs().max() / exact.abs().max())
    except RuntimeError as err:
        return f"bf16 autocast failed: {err}"
    return True if low.dtype == torch.bfloat16 and error < 0.05 else f"bf16 matmul off by {error:.3g} of its range"


def _compiled_step(mode: str, device: str = "cuda") -> bool | str:
    """A training step of a small MLP, compiled in `mode` as the engine compiles (train.engine._compiled) and run as
    it runs (bf16 autocast, CUDA graphs' step marks), gives eager's loss and gradient up to rounding."""
    import torch

    from peftstudy.train.engine import _compiled

    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 10)).to(device)
        x, y = torch.randn(32, 64, device=device), torch.randint(0, 10, (32,), device=device)

        def step(forward: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
            torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast(device, dtype=torch.bfloat16):
                logits = forward(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            (grad,) = torch.autograd.grad(loss, [net[0].weight])
            return loss.detach().clone(), grad.clone()

        eager = step(net)
        compiled = _compiled(net, mode)
        for _ in range(3):  # CUDA graphs record on a later call than the first
            got = step(compiled)
        same = all(torch.allclose(g, e, rtol=2e-2, atol=1e-3) for g, e in zip(got, eager, strict=True))
        return True if same else "the compiled step differs from eager beyond bf16 rounding"
    except Exception as err:  # any failure to compile is the answer, whatever raised it
        return f"{type(err).__name__}: {err}"


def run(args: Any) -> None:
    """`peftstudy doctor`: print the checklist; exit 1 if any check failed."""
    if args.probe_device:
        print(PROBE_MARK + json.dumps(probe_device(args.compile)), flush=True)
        return
    try:
        profile = load_profile(args.profile)
    except ValueError as err:
        raise SystemExit(f"peftstudy doctor: {err}") from None
    probes = Probes(python=args.python) if args.python else REAL
    lines = doctor(args.configfile, profile, probes, args.skip, args.build_envs)
    kind = "Slurm" if profile.slurm else "local"
    print(f"peftstudy doctor: profile {profile.path} ({kind})")
    print(render(lines), flush=True)
    if any(line.status == FAIL for line in lines):
        raise SystemExit(1)
