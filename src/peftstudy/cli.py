"""`peftstudy <stage> ...`: the entry points the Snakemake rules call.

`peftstudy run SPEC` runs a job given as its spec (plan.specs): every job of the workflow but the downloads,
`fetch`, `fetch-backbone` and `extract`, which keep flags so they can be run by hand too (as can `estimate` and
`doctor`, the user's tools). Every input a stage needs is an argument (or, for a long spec, a file named by one), so
any job can be rerun by hand from its log's command line. Heavy imports happen inside each stage, so a job pays only
for what it uses (docs/scale.md §3).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from peftstudy.plan import specs


@dataclass(frozen=True)
class _stage:  # lower case: read as a call, `set_defaults(func=_stage("module:function"))`
    """A stage's entry: `module:function`, imported only when that stage runs, so each stage loads only what it
    uses (torch and timm cost ~3.4 CPU-s a process; tests/test_cli.py pins which stages may import them). Torch
    stages set their threads through peftstudy.models.pick_device."""

    target: str

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    def __call__(self, *args: Any) -> None:
        # Python's cyclic GC walks every object the imports create, again and again while they pile up (torch and
        # timm: ~2,700 modules) and then in each full collection while the stage runs. Those objects live as long
        # as the process, so the GC pauses for the import and they are frozen out of it after: ~0.8 of a mini
        # training job's ~5.6 CPU-s, results unchanged (collection only frees what nothing can reach).
        gc.disable()
        try:
            module = importlib.import_module(self.module)
        finally:
            gc.enable()
        gc.freeze()
        getattr(module, self.target.partition(":")[2])(*args)


def _run(args: argparse.Namespace) -> None:
    """`peftstudy run`: the spec read (from the argument, or from the file after `@`), checked against its stage's
    dataclass, and handed to the stage with the options."""
    text = args.spec
    if text.startswith("@"):
        with open(text[1:]) as handle:
            text = handle.read()
    spec = specs.from_json(text)
    _stage(spec.target)(spec, specs.Options(threads=args.threads, concurrent=args.concurrent))


def _pin_args(p: argparse.ArgumentParser) -> None:
    """Arguments of the stages that download: what an unpinned sum means."""
    p.add_argument("--allow-unpinned", action="store_true", help="accept --sha256 none (the config's allow_unpinned)")
    p.add_argument("--config-key", default="", help="the config entry the sum is pinned under, for errors")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="peftstudy", description=__doc__)
    sub = top.add_subparsers(dest="stage", required=True)

    p = sub.add_parser("fetch", help="download a file (resumable), checked against its sha256")
    p.add_argument("--url", required=True, help="http(s):// or file:// URL, or a local path")
    p.add_argument("--sha256", required=True, help="the expected sha256, or none (refused unless --allow-unpinned)")
    _pin_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("--out-checksum", required=True, help="the file's sha256, written beside it")
    p.set_defaults(func=_stage("peftstudy.data.fetch:run_fetch"))

    p = sub.add_parser("fetch-backbone", help="download backbone weights, convert them to timm safetensors")
    p.add_argument("--url", required=True)
    p.add_argument("--sha256", required=True, help="the download's sha256, or none (refused unless --allow-unpinned)")
    _pin_args(p)
    p.add_argument("--format", required=True, help="the download's format (models.FORMATS: checked there)")
    p.add_argument("--arch", required=True, help="timm architecture the weights are for")
    p.add_argument("--out", required=True, help="the safetensors file (backbone.weights)")
    p.set_defaults(func=_stage("peftstudy.models:run_fetch"))

    p = sub.add_parser("extract", help="unpack a tar or zip archive atomically, refusing unsafe members")
    p.add_argument("--archive", required=True)
    p.add_argument("--out", required=True, help="the folder to create")
    p.add_argument("--max-unpacked-gb", type=float, default=None, help="refuse to unpack more (default 50)")
    p.add_argument("--config-key", default="", help="the archive's entry in the config (archives.<name>), for errors")
    p.set_defaults(func=_stage("peftstudy.data.fetch:run_extract"))

    p = sub.add_parser("run", help="run a job given as its spec (plan.specs: tune, final, collect, ...)")
    p.add_argument("spec", help="the spec's JSON, or @FILE holding it")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument(
        "--concurrent",
        type=int,
        default=0,
        help="runs trained at once, interleaved step by step (0: on a GPU as many of the job's as fit in its memory, "
        "measured; one on the CPU); fewer after an out-of-memory error",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser("estimate", help="a study's jobs, runs, images and GPU-hours before it is submitted")
    p.add_argument("--configfile", nargs="+", required=True, help="the study config(s), as given to snakemake")
    p.add_argument("--gpu", help="a GPU of peftstudy/tables/throughput.csv (measured rates; default: H100)")
    p.set_defaults(func=_stage("peftstudy.plan.cost:run"))

    p = sub.add_parser("doctor", help="preflight: what a study and a profile still lack, with the fix for each")
    p.add_argument(
        "--configfile", nargs="+", help="the study config(s), as given to snakemake (default: the profile's)"
    )
    p.add_argument("--profile", default="workflow/profiles/default", help="the Snakemake profile: its folder or file")
    p.add_argument(
        "--skip", nargs="+", default=[], choices=["device", "weights", "data", "disk", "slurm", "envs", "network"]
    )
    p.add_argument("--build-envs", action="store_true", help="resolve each conda env for real (conda's --dry-run)")
    p.add_argument("--python", help="the interpreter of the device test (default: this one; e.g. the train env's)")
    p.add_argument("--probe-device", action="store_true", help=argparse.SUPPRESS)  # the device test itself
    p.add_argument("--compile", action="append", default=[], help=argparse.SUPPRESS)  # its compile modes
    p.set_defaults(func=_stage("peftstudy.doctor:run"))

    return top


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # The exact command, quoted, so a job can be rerun by hand from its log.
    print(shlex.join(["peftstudy", *(sys.argv[1:] if argv is None else argv)]), file=sys.stderr, flush=True)
    if "SLURM_JOB_ID" in os.environ:
        print(f"SLURM_JOB_ID={os.environ['SLURM_JOB_ID']} on {os.uname().nodename}", file=sys.stderr, flush=True)
    args.func(args)


def entry() -> None:
    """The console script: `main`, then exit at once. Every output is complete and closed by then (written
    atomically); skipping the interpreter's teardown of torch saves ~0.9 s per job (a quarter of a small
    job's start-up cost), which adds up over the study's thousands of jobs."""
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    entry()
