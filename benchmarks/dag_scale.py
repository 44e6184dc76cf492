"""DAG scale: how long `snakemake -n` takes on a whole paper-scale study, planned from scratch and when done.

In a scratch copy of the repository (the checkout stays clean) it times

(a) the dry run of a study with no results: `snakemake -n --quiet rules --configfile <study>` (the job-count
    table, without the per-job listing), i.e. building the DAG of every tune and select job;
(b) the dry run once every output of the study exists and is up to date: "Nothing to be done".

For (b) it fakes the whole study, round by round: every output, log and benchmark file of every job a
full dry run plans (tune metrics, data, downloads, ...), each checkpoint's `selected.json` with valid content
naming a real grid point of the config; then, as the checkpoints are done, what the next dry run plans behind
them (the finals of those points, the data only finals read, records, analysis, robustness, tables, report).
Files are empty except `selected.json` (the only output the DAG reads); mtimes follow DAG order and the copied
sources are older still, so nothing is stale. Snakemake's `--touch` does not create missing files, hence the
faking. The no-op run must plan 0 jobs, or the script fails and shows what Snakemake would run.

Each timing is a fresh `snakemake` process, as a user runs it: interpreter start, plugin loading, config
validation, the DAG. Note: where Slurm's client is installed but no controller answers (this project's CI
machines between Slurm tests), the Slurm executor plugin waits ~9 s in `scontrol show config` at every
start; that wait is in both times (as wall time, not CPU time). Each run's CPU time (user + system) is printed
beside its wall time: on a shared machine it varies less. Last line (wall times, the minimum over --repeats,
as the machine is shared):

    dag_seconds=<s> noop_seconds=<s> jobs=<n>

    python benchmarks/dag_scale.py                                   # studies/paper.yaml, the whole paper
    python benchmarks/dag_scale.py --configfile studies/vtab1k.yaml  # VTAB-1K alone
    python benchmarks/dag_scale.py --configfile config.yaml --repeats 1 --keep
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from peftstudy.io import write_json
from peftstudy.plan import cost
from peftstudy.plan.study import grids

REPO = Path(__file__).resolve().parents[1]
# What a run of the workflow reads from the repository (profiles/: the auto-loaded default profile).
COPIED = ("Snakefile", "workflow", "profiles", "config.yaml", "studies", "src", "report", "resources", "envs")
DEFAULT_CONFIG = REPO / "studies/paper.yaml"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
JOB_HEAD = re.compile(r"^(local)?(rule|checkpoint) (\w+):$")
TOTAL = re.compile(r"^total\s+(\d+)$", re.MULTILINE)
NOTHING = "Nothing to be done"
# What a job writes; logs and benchmarks too, as another rule may read them (the tables read benchmarks).
PRODUCTS = ("output", "log", "benchmark")
MAX_ROUNDS = 5  # the study has one level of checkpoints: two rounds


@dataclass
class Job:
    """One job of a dry run's listing: what it reads and writes."""

    rule: str
    checkpoint: bool
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    wildcards: dict[str, str] = field(default_factory=dict)


def parse_jobs(listing: str) -> list[Job]:
    """The jobs a full (not --quiet) dry run prints, one block each."""
    jobs: list[Job] = []
    for line in listing.splitlines():
        head = JOB_HEAD.match(line.strip())
        if head:
            jobs.append(Job(rule=head[3], checkpoint=head[2] == "checkpoint"))
            continue
        key, _, value = line.strip().partition(": ")
        if not jobs or not line.startswith("    ") or not value:
            continue
        items = value.split(", ")
        if key == "input":
            jobs[-1].inputs = items
        elif key in PRODUCTS:
            jobs[-1].outputs += items
        elif key == "wildcards":
            jobs[-1].wildcards = dict(item.split("=", 1) for item in items)
    return jobs


def levels(jobs: Sequence[Job]) -> dict[int, int]:
    """Job index -> 1 + the level of its deepest producer among `jobs` (0: reads nothing they write)."""
    producer = {path: i for i, job in enumerate(jobs) for path in job.outputs}
    memo: dict[int, int] = {}

    def level(i: int) -> int:
        if i not in memo:
            parents = [producer[p] for p in jobs[i].inputs if p in producer]
            memo[i] = 1 + max(map(level, parents)) if parents else 0
        return memo[i]

    return {i: level(i) for i in range(len(jobs))}


def fake(path: Path, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path, (mtime, mtime))


def fake_outputs(root: Path, jobs: Sequence[Job], after: float) -> float:
    """Create the jobs' outputs, a job's mtime one second per level after `after`; returns the newest mtime."""
    depth = levels(jobs)
    for i, job in enumerate(jobs):
        for out in job.outputs:
            fake(root / out, after + 1 + depth[i])
    return after + 1 + max(depth.values(), default=0)


def fake_round(root: Path, jobs: Sequence[Job], config: dict, after: float) -> float:
    """Create every output of `jobs`, each checkpoint's selected.json naming the first point of each method's grid
    on every dataset.

    A job's outputs get the mtime `after` + 1 s per level, so each is newer than what it reads; returns the
    newest mtime. Outputs of jobs that wait for a checkpoint are made too, and remade newer next round.
    """
    study_grids = grids(config)
    for job in jobs:
        if job.checkpoint:
            experiment = config["experiments"][job.wildcards["experiment"]]
            choices = {}
            for method in experiment["methods"]:
                gp, hp = next(iter(study_grids[job.wildcards["experiment"], method].items()))
                choices[method] = {
                    "gp": gp,
                    "hp": hp,
                    "metric": "val_top1",
                    "score": 0.0,
                    "rule": "faked by benchmarks/dag_scale.py",
                }
            selected = root / next(p for p in job.outputs if p.endswith("selected.json"))
            content = {"datasets": {dataset: choices for dataset in experiment["datasets"]}}
            write_json(selected, content, schema="selected")
    depth = levels(jobs)
    for i, job in enumerate(jobs):
        for out in job.outputs:
            fake(root / out, after + 1 + depth[i])
    return after + 1 + max(depth.values(), default=0)


def fake_study(root: Path, configfiles: Sequence[Path]) -> int:
    """Fake every output of the study in `root`, round by round; returns the number of files made.

    A round fakes what a dry run plans. Jobs behind a checkpoint (the finals, and the data only they read)
    are planned once the checkpoint's output exists, so rounds go on until one fakes no checkpoint.
    The copied sources get the oldest mtime, each round's outputs newer ones than the last round's.
    """
    config = load_config(root, configfiles)
    mtime = time.time() - 24 * 3600  # in the past: Snakemake warns about mtimes in the future
    for path in root.rglob("*"):
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    made: set[str] = set()
    for _ in range(MAX_ROUNDS):
        jobs = parse_jobs(snakemake(root, configfiles).output)
        mtime = fake_round(root, jobs, config, mtime)
        made.update(out for job in jobs for out in job.outputs)
        if not any(job.checkpoint for job in jobs):
            return len(made)
    raise SystemExit(f"still planning checkpoints after {MAX_ROUNDS} rounds of faking")


def load_config(root: Path, paths: Sequence[Path]) -> dict:
    """The study config as the workflow sees it (plan.cost.load_config: the --configfile files merged, their
    `include`s composed, the schema checked), from `root`: include paths are relative to where snakemake runs."""
    with contextlib.chdir(root):
        return cost.load_config([str(path) for path in paths])


def copy_repo(root: Path) -> None:
    """What a run of the workflow reads from the repository (COPIED), into a new folder `root`."""
    root.mkdir(parents=True)
    for name in COPIED:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, root / name)


@contextlib.contextmanager
def scratch_dir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary folder for scratch copies, removed afterwards unless `keep` (then its path is printed)."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield scratch
    finally:
        if keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class Run:
    wall: float
    cpu: float  # user + system: what the machine's other work does not inflate as it does the wall time
    output: str


def snakemake(root: Path, configfiles: Sequence[Path], *args: str) -> Run:
    """Run snakemake in `root`, timed; fails loudly on a non-zero exit."""
    env = dict(os.environ, PYTHONPATH=str(root / "src"))  # the copy's package, not the checkout's
    cmd = [str(SNAKEMAKE), "-n", "--configfile", *map(str, configfiles), *args]
    before, began = cpu_of_children(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - began, cpu_of_children() - before
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-6000:]}")
    return Run(wall, cpu, proc.stdout + proc.stderr)


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def planned(output: str) -> int:
    """Jobs a `-n --quiet rules` run planned: its job-count table's total, 0 for nothing to do."""
    if NOTHING in output:
        return 0
    total = TOTAL.search(output)
    if total is None:
        raise SystemExit(f"no job count in the dry run's output:\n{output[-3000:]}")
    return int(total[1])


def summary(name: str, runs: Sequence[Run]) -> None:
    for what, times in (("wall", [r.wall for r in runs]), ("CPU", [r.cpu for r in runs])):
        med = statistics.median(times)
        print(f"{name} {what}: min {min(times):.2f} s, median {med:.2f} s over {len(times)}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configfile", action="append", type=Path, help=f"repeatable, merged in order (default {DEFAULT_CONFIG})"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kind")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    args = parser.parse_args(argv)
    configfiles = [p.resolve() for p in (args.configfile or [DEFAULT_CONFIG])]

    with scratch_dir("dag_scale.", args.keep) as scratch:
        root = scratch / "repo"
        copy_repo(root)
        dags = [snakemake(root, configfiles, "--quiet", "rules") for _ in range(args.repeats)]
        counts = {planned(run.output) for run in dags}
        for i, run in enumerate(dags):
            print(f"dry run {i + 1}: {run.wall:.2f} s (CPU {run.cpu:.2f} s), {planned(run.output)} jobs", flush=True)
        if len(counts) != 1:
            raise SystemExit(f"the dry runs planned different job counts: {sorted(counts)}")

        files = fake_study(root, configfiles)
        print(f"faked {files} output files", flush=True)

        noops = []
        for i in range(args.repeats):
            run = snakemake(root, configfiles, "--quiet", "rules")
            if planned(run.output):
                why = snakemake(root, configfiles).output
                raise SystemExit(f"the study is faked, yet a dry run plans jobs:\n{why[-6000:]}")
            noops.append(run)
            print(f"no-op run {i + 1}: {run.wall:.2f} s (CPU {run.cpu:.2f} s), 0 jobs", flush=True)

        summary("dry run", dags)
        summary("no-op run", noops)
        dag, noop = min(r.wall for r in dags), min(r.wall for r in noops)
        print(f"dag_seconds={dag:.2f} noop_seconds={noop:.2f} jobs={counts.pop()}", flush=True)


if __name__ == "__main__":
    main()
