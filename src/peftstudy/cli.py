"""`peftstudy <stage> ...`: the entry points the Snakemake rules call.

`peftstudy run SPEC` runs a job given as its spec (plan.specs: the generate, prepare, pretrain, tune, select,
final, collect, ensemble, robustness, tables and report jobs so far); the other stages still take flags. Every
input a stage needs is an argument (or, for a long spec, a file named by one), so any job can be rerun by hand from
its log's command line. Heavy imports happen inside each stage, so a job pays only for what it uses (docs/scale.md §3).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from peftstudy.plan import specs
from peftstudy.plan.defaults import DEFAULTS


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text[:80]}") from err


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
    p.add_argument("--format", required=True, choices=["npz", "safetensors", "torch"])
    p.add_argument("--arch", required=True, help="timm architecture the weights are for")
    p.add_argument("--out", required=True, help="the safetensors file (backbone.weights)")
    p.set_defaults(func=_stage("peftstudy.models:run_fetch"))

    p = sub.add_parser("extract", help="unpack a tar or zip archive atomically, refusing unsafe members")
    p.add_argument("--archive", required=True)
    p.add_argument("--out", required=True, help="the folder to create")
    p.add_argument("--max-unpacked-gb", type=float, default=None, help="refuse to unpack more (default 50)")
    p.add_argument("--config-key", default="", help="the archive's entry in the config (archives.<name>), for errors")
    p.set_defaults(func=_stage("peftstudy.data.fetch:run_extract"))

    p = sub.add_parser("index", help="the manifest of a dataset folder already in the processed-VTAB layout")
    p.add_argument("--dataset", required=True)
    p.add_argument("--source", required=True, help="the dataset's folder")
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--about", type=_json, required=True, help="where the folder came from (provenance)")
    p.add_argument("--checksum-file", default="", help="the archive's sha256 file, if it came from one")
    p.add_argument("--out", required=True, help="manifest.json")
    p.set_defaults(func=_stage("peftstudy.data.layout:run_index"))

    p = sub.add_parser("imagenet", help="check a downloaded ImageNet set, write its lists (layout) and manifest")
    p.add_argument(
        "--set", required=True, choices=["imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_r", "imagenet_a"]
    )
    p.add_argument("--root", required=True, help="the folder the set was downloaded to (from the config)")
    p.add_argument("--out", required=True, help="the layout folder: lists, and links into --root")
    p.add_argument("--manifest", required=True, help="manifest.json, written beside the folder")
    p.add_argument("--out-checked", default="", help="<set>.checked.json (default: beside the manifest)")
    p.add_argument("--dataset", default="", help="the dataset's name in the config (default: --set)")
    p.add_argument("--shots", type=int, default=DEFAULTS["imagenet_shots"], help="imagenet: training images per class")
    p.add_argument(
        "--val-per-class", type=int, default=DEFAULTS["imagenet_val_per_class"], help="imagenet: val images per class"
    )
    p.add_argument("--seed", type=int, default=DEFAULTS["imagenet_sample_seed"], help="imagenet: the sampling seed")
    p.set_defaults(func=_stage("peftstudy.data.imagenet:run"))

    p = sub.add_parser("manyshot-lists", help="download the authors' split lists of a many-shot subset (pinned)")
    p.add_argument("--dataset", required=True, choices=["cifar100", "resisc45"])
    p.add_argument("--subset", required=True, help="cifar100: 500 1k 5k 10k full; resisc45: 225 450 ... full")
    p.add_argument("--base-url", default="", help="where the lists are (default: GitHub at the pinned commit)")
    p.add_argument("--out", required=True, help="the folder of lists, as under the authors' data/annotations/")
    p.add_argument("--pins", type=_json, default=None, help='{"file": "sha256"}: your own lists in place of theirs')
    p.set_defaults(func=_stage("peftstudy.data.manyshot:run_lists"))

    p = sub.add_parser("manyshot", help="a many-shot subset and fold in the processed-VTAB layout")
    p.add_argument("--dataset", required=True, choices=["cifar100", "resisc45"])
    p.add_argument("--subset", required=True)
    p.add_argument(
        "--fold", type=int, default=DEFAULTS["manyshot_fold"], help="0..4 for cifar100 500 and resisc45 225/450, else 0"
    )
    p.add_argument("--source", required=True, help="the extracted archive (cifar-100-python/ or NWPU-RESISC45/)")
    p.add_argument("--lists", required=True, help="the folder manyshot-lists filled")
    p.add_argument("--name", default="", help="the dataset's name in the manifest (default: dataset-subset[-foldK])")
    p.add_argument("--checksum-file", default="", help="the archive's sha256 file (provenance)")
    p.add_argument("--pins", type=_json, default=None, help='{"file": "sha256"}: your own lists in place of theirs')
    p.add_argument("--out", required=True, help="the source folder")
    p.add_argument("--manifest", required=True, help="manifest.json, written beside the folder")
    p.set_defaults(func=_stage("peftstudy.data.manyshot:run"))

    p = sub.add_parser("vtab-tfds", help="build a VTAB-1K task from TensorFlow Datasets in the processed-VTAB layout")
    p.add_argument("--task", required=True, help="the processed folder's name (cifar, ..., smallnorb_ele)")
    p.add_argument("--data-dir", required=True, help="TFDS data_dir: downloads and prepared builders")
    p.add_argument("--out", required=True, help="the source folder")
    p.add_argument("--manifest", required=True, help="manifest.json, written beside the folder")
    p.add_argument("--dataset", default="", help="the manifest's dataset name (the config's); default: the task")
    p.set_defaults(func=_stage("peftstudy.data.vtab_tfds:run"))

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

    p = sub.add_parser("zero-shot-head", help="CLIP's zero-shot head from its text tower (docs/protocol.md §A.1), once")
    p.add_argument("--clip-weights", required=True, help="the full CLIP checkpoint (OpenAI/OpenCLIP state dict)")
    p.add_argument("--classnames", required=True, help="imagenet (OpenAI's clean names), or a file: one a line")
    p.add_argument("--clip-model", default=DEFAULTS["clip_model"], help="open_clip config of the checkpoint")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="the head's safetensors file (proj, classifier weight and bias)")
    p.set_defaults(func=_stage("peftstudy.models.clip:run_zero_shot_head"))
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
