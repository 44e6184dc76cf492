"""Sweep overhead: the CPU time of Snakemake's own process over a whole study run, projected to the paper.

Snakemake's main loop builds the DAG, re-evaluates it after every checkpoint (each `select`, one per experiment),
and runs a scheduling round after every finished job; at paper scale that alone may take hours. This measures it
on the study's real DAG through Snakemake's real scheduler, in a scratch copy of the repository (the checkout
stays clean):

1. Each size `ExD` is the study restricted to its first E experiments (E checkpoints) and each one's first D
   datasets (all methods, grids and seeds kept; `all` for every one), written as one self-contained config. A
   dry run lists its jobs; the data stage's jobs (downloads, extraction, indexing: every job no stand-in
   answers) get faked outputs, older sources first, as benchmarks/dag_scale.py fakes them.
2. The fit (4.) must be able to tell its terms apart: before anything runs, the sizes' planned (jobs,
   checkpoints) must give a design of full rank, i.e. checkpoints that differ between sizes of different job
   counts. Sizes that vary only the datasets keep the checkpoints fixed (one per experiment), so jobs and
   checkpoints x jobs move together and any split between them is arbitrary: the benchmark refuses them
   (`--plan-only` shows the sizes' counts and stops there; `--no-fit` measures the sizes and projects nothing).
3. `snakemake all` then runs every other job for real, with `peftstudy` replaced by benchmarks/sweep_stand_in.py
   (first on PATH in the scratch copy: schema-valid outputs in milliseconds; `select` and `collect` are the real
   ones). A second dry run must find nothing to do. The CPU time (user + system) of Snakemake's own process is
   read from /proc/<pid>/stat when it exits (before it is reaped): the stand-ins, shells, `sbatch` and `squeue`
   calls are its children, counted apart. CPU time, not wall time: other work on a shared machine inflates the
   latter.
4. The fit: seconds = a + b * jobs + c * checkpoints * jobs (each checkpoint re-evaluates the whole DAG; each
   scheduling round walks every ready job), by non-negative least squares over the sizes, jobs and
   checkpoints being the dry run's planned counts; each size's residual is printed; projected to the
   --project study's own counts (its dry run).

Last line:

    snakemake_seconds=<projected CPU seconds of the --project study> jobs=<n> checkpoints=<n>

    python benchmarks/sweep_overhead.py        # studies/paper.yaml at 1x1 1xall allx1 allx2 -> studies/paper.yaml
    python benchmarks/sweep_overhead.py --plan-only                     # the same sizes' counts; runs nothing
    python benchmarks/sweep_overhead.py --configfile config.yaml --sizes 1x1 1x2 2x1 --project config.yaml
    python benchmarks/sweep_overhead.py --configfile config.yaml --sizes 2x1 --no-fit --slurm debug  # through Slurm
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from dag_scale import REPO, SNAKEMAKE, Job, copy_repo, fake_outputs, load_config, parse_jobs, scratch_dir
from scipy.optimize import nnls

STAND_IN = Path(__file__).resolve().parent / "sweep_stand_in.py"
DEFAULT_CONFIG = REPO / "studies/paper.yaml"
DEFAULT_PROJECT = REPO / "studies/paper.yaml"
# VTAB-1K alone at 1 and 19 tasks (1 checkpoint), the paper at 1 and 2 datasets per experiment (53 checkpoints):
# two checkpoint counts, each over a range of jobs, so the per-job and per-checkpoint terms separate.
DEFAULT_SIZES = ("1x1", "1xall", "allx1", "allx2")
SIZE = re.compile(r"^(all|[1-9]\d*)x(all|[1-9]\d*)$")
# Smallest singular value of the design (each column scaled to a largest entry of 1) over its largest below
# which the terms count as inseparable: the residuals could then move between them at no cost.
SEPARABLE = 1e-2
# Rules whose jobs run for real (the stand-in answers their `peftstudy <stage>`; spec_file writes a spec in
# Snakemake's own process); every other job is faked.
RUN_RULES = (
    "prepare",
    "tune",
    "spec",
    "select",
    "final",
    "collect",
    "ensemble",
    "robustness",
    "tables",
    "report",
    "all",
)
DONE = re.compile(r"(\d+) of (\d+) steps \(100%\) done")
NOTHING = "Nothing to be done"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Size:
    """The study's first `experiments` experiments, each at its first `datasets` datasets (None: all)."""

    experiments: int | None
    datasets: int | None

    @classmethod
    def parse(cls, text: str) -> Size:
        match = SIZE.match(text)
        if not match:
            raise argparse.ArgumentTypeError(f"size {text!r}: EXPERIMENTSxDATASETS, each a number or all, e.g. 2x1")
        return cls(*(None if part == "all" else int(part) for part in match.groups()))

    def __str__(self) -> str:
        return "x".join("all" if n is None else str(n) for n in (self.experiments, self.datasets))


class NotSeparable(ValueError):
    """The sizes cannot tell the fit's terms apart."""


@dataclass
class Prepared:
    """One size set up in its scratch copy: what to run Snakemake with and what its dry run plans."""

    size: Size
    root: Path
    configs: list[Path]
    env: dict[str, str]
    jobs: list[Job]

    @property
    def checkpoints(self) -> int:
        return sum(job.checkpoint for job in self.jobs)


@dataclass
class Measured:
    size: Size
    planned: int  # jobs of the dry run before anything ran (the finals behind the checkpoints not yet known)
    checkpoints: int
    executed: int
    cpu: float  # Snakemake's own process
    children_cpu: float  # the jobs it ran locally, sbatch and squeue calls
    wall: float


@dataclass
class Process:
    wall: float
    cpu: float
    children_cpu: float
    returncode: int
    output: str


def run_measured(cmd: Sequence[str], cwd: Path, env: dict[str, str], log: Path, limit: float | None = None) -> Process:
    """Run `cmd`, SIGKILLed after `limit` seconds; its own CPU time is read from /proc when it has exited but is not
    yet reaped (WNOWAIT): what `getrusage(RUSAGE_CHILDREN)` gives would include every job it ran. No `timeout`
    wrapper: the process measured must be the command itself."""
    began = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        killer = threading.Timer(limit, proc.kill) if limit else None
        if killer:
            killer.start()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        if killer:
            killer.cancel()
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        returncode = proc.wait()
    wall = time.perf_counter() - began
    # After the command name: utime, stime, cutime, cstime are fields 12-15 (proc(5) numbers them 14-17).
    utime, stime, cutime, cstime = (int(f) / TICKS for f in fields[11:15])
    return Process(wall, utime + stime, cutime + cstime, returncode, log.read_text())


def dry_run(root: Path, configfiles: Sequence[Path], env: dict[str, str], *args: str) -> str:
    cmd = [str(SNAKEMAKE), "all", "-n", "--configfile", *map(str, configfiles), *args]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


def plan(root: Path, configfiles: Sequence[Path], env: dict[str, str]) -> list[Job]:
    jobs = parse_jobs(dry_run(root, configfiles, env))
    if not jobs:
        raise SystemExit(f"the dry run of {[str(p) for p in configfiles]} planned no job")
    return jobs


def restricted(config: dict, size: Size) -> dict:
    """The whole config at `size`: its first experiments, each at its first datasets (methods, grids and seeds
    kept), and what refers to a dropped experiment dropped (robustness, analysis). A whole config, not an
    override: Snakemake merges --configfile files key by key, so an override cannot remove an experiment."""
    kept = list(config["experiments"].items())[: size.experiments]
    sized = dict(config, experiments={name: dict(exp, datasets=exp["datasets"][: size.datasets]) for name, exp in kept})
    names = dict(kept)
    if "robustness" in sized and sized["robustness"]["experiment"] not in names:
        del sized["robustness"]
    if "methods" in sized.get("analysis", {}):
        methods = {name: m for name, m in sized["analysis"]["methods"].items() if name in names}
        sized["analysis"] = dict(sized["analysis"], methods=methods)
    return sized


def is_faked(job: Job) -> bool:
    return job.rule.split("_")[0] not in RUN_RULES


def install_stand_in(bin_dir: Path) -> None:
    bin_dir.mkdir()
    command = bin_dir / "peftstudy"
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN}" "$@"\n')
    command.chmod(0o755)


def slurm_profile(root: Path, partition: str) -> None:
    """The project's slurm profile for a small local Slurm: its partition, quick polls, no conda, small jobs
    (as tests/test_slurm.py adapts it); the study config comes from the benchmark's --configfile."""
    profile = yaml.safe_load((REPO / "slurm/config.yaml").read_text())
    for key in ("configfile", "software-deployment-method"):
        profile.pop(key, None)
    profile.update({"slurm-init-seconds-before-status-checks": 2, "latency-wait": 5})
    profile["default-resources"] = {"slurm_partition": partition, "mem_mb": 500, "runtime": 10}
    (root / "slurm").mkdir(exist_ok=True)
    (root / "slurm/config.yaml").write_text(yaml.safe_dump(profile))


def set_up(scratch: Path, configfiles: Sequence[Path], size: Size, slurm: str | None = None) -> Prepared:
    """A fresh copy of the study at one size, the stand-in first on PATH, the data stage faked: the config
    and the environment to run Snakemake with, and the jobs its dry run plans."""
    root = scratch / f"size{size}"
    copy_repo(root)
    install_stand_in(root / "bin")
    if slurm:
        slurm_profile(root, slurm)
    sized = root / "sweep_size.yaml"
    sized.write_text(yaml.safe_dump(restricted(load_config(root, configfiles), size), sort_keys=False))
    configs = [sized]
    env = dict(
        os.environ,
        PYTHONPATH=str(root / "src"),  # the copy's package (the real select and collect), not the checkout's
        PATH=f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}",
    )

    sources = time.time() - 24 * 3600  # in the past: Snakemake warns about mtimes in the future
    for path in root.rglob("*"):
        os.utime(path, (sources, sources), follow_symlinks=False)
    jobs = plan(root, configs, env)
    fake_outputs(root, [job for job in jobs if is_faked(job)], sources)
    return Prepared(size, root, configs, env, jobs)


def measure(prepared: Prepared, run_args: Sequence[str], slurm: str | None) -> Measured:
    """One size, set up: the whole study run, then nothing left to do."""
    root, configs, env = prepared.root, prepared.configs, prepared.env
    executor = ["--profile", "slurm"] if slurm else []
    cmd = [str(SNAKEMAKE), "all", "--configfile", *map(str, configs), *executor, *run_args]
    # A Snakemake stuck polling Slurm ignores SIGTERM (docs/slurm.md §4): SIGKILL after an hour.
    run = run_measured(cmd, root, env, root / "run.log", limit=3600 if slurm else None)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({run.returncode}):\n{run.output[-8000:]}")
    done = DONE.findall(run.output)
    if not done:
        raise SystemExit(f"no '... steps (100%) done' in the run's log:\n{run.output[-3000:]}")
    if NOTHING not in dry_run(root, configs, env, "--quiet", "rules"):
        raise SystemExit(f"after the run, a dry run still plans jobs:\n{dry_run(root, configs, env)[-6000:]}")
    return Measured(
        size=prepared.size,
        planned=len(prepared.jobs),
        checkpoints=prepared.checkpoints,
        executed=int(done[-1][1]),
        cpu=run.cpu,
        children_cpu=run.children_cpu,
        wall=run.wall,
    )


def terms(jobs: float, checkpoints: float) -> list[float]:
    return [1.0, jobs, checkpoints * jobs]


def check_separable(points: Sequence[tuple[int, int]]) -> None:
    """Raise NotSeparable unless the (jobs, checkpoints) points determine a, b and c of the fit: at least as
    many distinct points as terms, and a design matrix of full rank (not merely so by rounding)."""
    n_terms = len(terms(1, 1))
    distinct = sorted(set(points))
    design = np.array([terms(jobs, checkpoints) for jobs, checkpoints in distinct], dtype=float)
    scaled = design / np.abs(design).max(axis=0)
    singular = np.linalg.svd(scaled, compute_uv=False)
    rank = int((singular > SEPARABLE * singular[0]).sum())
    if len(distinct) >= n_terms and rank == n_terms:
        return
    checkpoint_counts = sorted({c for _, c in distinct})
    raise NotSeparable(
        f"the sizes' (jobs, checkpoints) {distinct} give {len(distinct)} distinct points and a design of rank "
        f"{rank} of {n_terms}: seconds = a + b * jobs + c * checkpoints * jobs cannot be fitted"
        + (
            f"; every size has {checkpoint_counts[0]} checkpoint(s), so the per-job and per-checkpoint terms"
            " move together"
            if len(checkpoint_counts) == 1
            else ""
        )
        + ". Add sizes with another number of experiments (checkpoints) at another number of jobs, "
        f"e.g. --sizes {' '.join(DEFAULT_SIZES)}"
    )


def fit(sizes: Sequence[Measured]) -> np.ndarray:
    """a, b, c >= 0 of seconds = a + b * jobs + c * checkpoints * jobs; NotSeparable if the sizes cannot tell
    them apart."""
    check_separable([(m.planned, m.checkpoints) for m in sizes])
    design = np.array([terms(m.planned, m.checkpoints) for m in sizes])
    coefficients, _ = nnls(design, np.array([m.cpu for m in sizes]))
    return coefficients


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--configfile", action="append", type=Path, help=f"repeatable, merged in order (default {DEFAULT_CONFIG})"
    )
    parser.add_argument(
        "--sizes",
        type=Size.parse,
        nargs="+",
        default=[Size.parse(s) for s in DEFAULT_SIZES],
        help=f"EXPERIMENTSxDATASETS each: the first E experiments at their first D datasets (default "
        f"{' '.join(DEFAULT_SIZES)})",
    )
    parser.add_argument(
        "--project", action="append", type=Path, help=f"the study to project to, repeatable (default {DEFAULT_PROJECT})"
    )
    parser.add_argument("--cores", type=int, default=8, help="local executor: --cores of the measured runs")
    parser.add_argument("--scheduler", default="greedy", help="Snakemake's --scheduler (greedy or ilp)")
    parser.add_argument("--slurm", metavar="PARTITION", help="run through the slurm profile on this partition")
    parser.add_argument("--plan-only", action="store_true", help="plan the sizes and check the fit; run nothing")
    parser.add_argument("--no-fit", action="store_true", help="measure the sizes, fit and project nothing")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies (their path is printed)")
    args = parser.parse_args(argv)
    configfiles = [p.resolve() for p in (args.configfile or [DEFAULT_CONFIG])]
    project = [p.resolve() for p in (args.project or [DEFAULT_PROJECT])]
    run_args = ["--scheduler", args.scheduler, *([] if args.slurm else ["--cores", str(args.cores)])]

    with scratch_dir("sweep_overhead.", args.keep) as scratch:
        prepared = [set_up(scratch, configfiles, size, args.slurm) for size in dict.fromkeys(args.sizes)]
        for p in prepared:
            print(f"size={p.size}: planned {len(p.jobs)} jobs, {p.checkpoints} checkpoints", flush=True)
        try:
            if not args.no_fit:
                check_separable([(len(p.jobs), p.checkpoints) for p in prepared])
        except NotSeparable as error:
            raise SystemExit(f"sweep_overhead: refused before running anything: {error} (or --no-fit)") from None
        if args.plan_only:
            return
        sizes = []
        for p in prepared:
            m = measure(p, run_args, args.slurm)
            sizes.append(m)
            print(
                f"size={m.size}: planned {m.planned} jobs, {m.checkpoints} checkpoints, executed {m.executed};"
                f" Snakemake CPU {m.cpu:.2f} s (its jobs {m.children_cpu:.2f} s), wall {m.wall:.1f} s,"
                f" {1000 * m.cpu / m.executed:.1f} ms per executed job",
                flush=True,
            )
            # The same as figures, for benchmarks/record.py.
            size = m.size
            print(f"snakemake_cpu[{size}]={m.cpu:.2f} jobs_cpu[{size}]={m.children_cpu:.2f} wall[{size}]={m.wall:.1f}")
        if args.no_fit:
            return
        a, b, c = fit(sizes)
        print(f"fit: seconds = {a:.3g} + {b:.3g} * jobs + {c:.3g} * checkpoints * jobs", flush=True)
        for m in sizes:
            fitted = float(np.dot([a, b, c], terms(m.planned, m.checkpoints)))
            print(f"size={m.size}: measured {m.cpu:.1f} s, fitted {fitted:.1f} s, residual {m.cpu - fitted:+.1f} s")
        copy_repo(scratch / "project")
        env = dict(os.environ, PYTHONPATH=str(scratch / "project/src"))
        jobs = plan(scratch / "project", project, env)
        n, checkpoints = len(jobs), sum(job.checkpoint for job in jobs)
        seconds = float(np.dot([a, b, c], terms(n, checkpoints)))
        print(f"snakemake_seconds={seconds:.0f} jobs={n} checkpoints={checkpoints}", flush=True)


if __name__ == "__main__":
    main()
