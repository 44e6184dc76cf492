"""Training throughput: the authors' loop (docs/protocol.md §B.1) against peftstudy's engine, same method, model, data.

(a) reference: fp32; each epoch, DataLoader workers decode every image file and resize it (PIL bicubic);
(b) engine: the split decoded once into a uint8 cache (the prepare rule does it once per dataset split for
all of its runs: its time is printed on its own line, and amortised over --runs-per-cache runs in the
`+decode` column), kept on the device, converted per batch; fused AdamW on CUDA; at each of --precisions
(fp32 beside the reference separates the data path from the precision), optionally torch.compile'd, and
with --concurrent runs trained at once (issue 17: a GPU that one run at batch 64 leaves launch-bound).

Like for like: every engine row runs what the pipeline runs, at the recipe's drop-path. The linear probe's
engine rows run the live backbone (frozen, in train mode, drop-path on), as the reference does; its cached-
feature row (features once, in eval mode, no drop-path: another computation, which the pipeline uses only
without drop-path) is printed apart and left out of the speedup.

Both train freshly initialised models (seeded alike) for --epochs epochs after one untimed warm-up epoch
(worker start-up, cuDNN autotuning, compilation). Images/s = trained images / wall time. Every loop of a method
is timed --repeats times (default 3), the loops taking turns (reference, engine, ..., reference, engine, ...), so
that a change in the machine's load reaches all of them alike: each row shows the median and, in brackets, the
range; a speedup is the median of the repetitions' own ratios (engine_i / reference_i), with their range. A wide
range says the machine was busy: quote the median, record the run (benchmarks/record.py). On CUDA each engine
row also gives MFU: measured FLOPs of a training step (torch's FlopCounterMode) x images/s over the device's
dense bf16 peak (fp32 rows against the same peak, so the columns compare). --sweep-images projects a sweep's
GPU-hours from the measured rates (the arithmetic is printed). Each row's figures are also printed as
`rate[<method>/<loop>]=<img/s>` and `speedup[<method>]=<x>x` lines (medians), for benchmarks/record.py. The last
line is `speedup=<x>x`: the engine as the pipeline runs it on this device (default precision, --compile,
--concurrent) over the reference, the geometric mean over --methods of each method's median ratio.

With --csv, each method's engine rows of one run alone, eager (one per --precisions), are appended to a CSV in
the format of src/peftstudy/tables/throughput.csv (what `peftstudy estimate` reads): copy them there to refresh it.

    python benchmarks/train_throughput.py --methods lora                          # CPU, the mini ViT
    python benchmarks/record.py train_throughput -- python benchmarks/train_throughput.py --methods linear lora
    python benchmarks/train_throughput.py --table benchmarks/results/train_throughput-<date>.json  # README table
    bash benchmarks/gpu_table.sh                                                  # every GPU row (ViT-B/16)
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from peftstudy.data.layout import decode
from peftstudy.models import pick_device
from peftstudy.plan.cost import THROUGHPUT_COLUMNS
from peftstudy.plan.specs import Backbone
from peftstudy.train import reference
from peftstudy.train.engine import (
    COMPILE_MODES,
    Recipe,
    Run,
    bf16_on,
    features,
    fit,
    seed_everything,
    to_input,
    train_together,
)
from peftstudy.train.runs import build

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name fragment.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}
# VTAB-1K's sweep (docs/protocol.md §B.2): 9,804 tune runs of 100 epochs on 800 images, 304 finals of 100 on 1,000.
VTAB1K_SWEEP_IMAGES = 9_804 * 100 * 800 + 304 * 100 * 1_000


def make_images(root: Path, n: int, native: int, classes: int, seed: int) -> list[tuple[str, int]]:
    """n JPEG files of `native` x `native` pixels: smooth random colour fields (natural-image-like sizes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((native, native), Image.BILINEAR)
        rel = f"images/{i:06d}.jpg"
        img.save(root / rel, quality=95)
        rows.append((rel, int(rng.integers(classes))))
    return rows


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, tflops in PEAK_BF16_TFLOPS.items():
        if fragment in name:
            return tflops * 1e12
    return None


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> float:
    """FLOPs of one training step's forward and backward (what MFU counts; the optimizer is negligible)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Bench:
    """One method's runs on one device: the data, and how to build and time a run."""

    def __init__(self, method: str, args: argparse.Namespace, root: Path, rows, cache: np.ndarray, device):
        self.method, self.args, self.root, self.rows, self.cache, self.device = method, args, root, rows, cache, device
        self.y = torch.from_numpy(np.array([label for _, label in rows], dtype=np.int64)).to(device)
        self.base = dict(
            batch_size=args.batch_size, warmup_epochs=0, drop_path=args.drop_path, lr_step="authors", epochs=1
        )
        self.peak = peak_flops(device)

    def model(self, recipe: Recipe, seed: int = 0) -> torch.nn.Module:
        backbone = Backbone(arch=self.args.arch, weights=None, sha256=None, keep_head=False)
        seed_everything(seed)
        model, *_ = build(self.method, {"lr": 1e-3, "wd": 1e-4}, backbone, self.args.classes, recipe, self.device)
        return model

    def engine(self, precision: str, compile_mode: str, concurrent: int, epochs: int) -> float:
        """Images/s (all runs together) of `concurrent` engine runs of `epochs` epochs, freshly built."""
        recipe = Recipe(**dict(self.base, epochs=epochs, precision=precision, compile=compile_mode))
        models = [self.model(recipe, seed) for seed in range(concurrent)]
        cfg = models[0].pretrained_cfg
        x = to_input(self.cache, cfg["mean"], cfg["std"], self.device)
        runs = [Run(m, x, self.y, 1e-3 * (1 + s), 1e-4, recipe, s, log_every=0) for s, m in enumerate(models)]
        synchronize(self.device)
        start = time.perf_counter()
        train_together(runs)
        synchronize(self.device)
        seconds = time.perf_counter() - start
        steps = len(self.y) // self.args.batch_size
        return concurrent * epochs * steps * self.args.batch_size / seconds

    def engine_mfu(self, precision: str, rate: float) -> float | None:
        """MFU of the engine at `precision` running at `rate` images/s (None off CUDA)."""
        if self.peak is None:
            return None
        recipe = Recipe(**dict(self.base, precision=precision))
        return self.mfu(self.model(recipe), bf16_on(recipe, self.device), rate)

    def mfu(self, model: torch.nn.Module, bf16: bool, rate: float) -> float | None:
        if self.peak is None:
            return None
        cfg, b = model.pretrained_cfg, self.args.batch_size
        x = to_input(self.cache[:b], cfg["mean"], cfg["std"], self.device)[:]
        return 100 * step_flops(model, x, self.y[:b], bf16) / b * rate / self.peak

    def reference(self, epochs: int) -> float:
        data = reference.ImageFiles(self.root, self.rows, self.args.image_size)
        recipe = Recipe(**dict(self.base, epochs=epochs, precision="fp32"))
        kwargs = dict(lr=1e-3, wd=1e-4, recipe=recipe, seed=0, workers=self.args.workers, device=self.device)
        _, rate = reference.fit(self.model(recipe), data, **kwargs)
        return rate

    def cached_linear(self, precision: str, epochs: int) -> float:
        """The linear probe on features computed once (eval mode, no drop-path); the features' pass is timed."""
        recipe = Recipe(**dict(self.base, epochs=epochs, precision=precision))
        model = self.model(recipe)
        cfg = model.pretrained_cfg
        synchronize(self.device)
        start = time.perf_counter()
        x = features(
            model, to_input(self.cache, cfg["mean"], cfg["std"], self.device), 256, bf16_on(recipe, self.device)
        )
        fit(model.head, x, self.y, lr=1e-3, wd=1e-4, recipe=recipe, seed=0, log_every=0)
        synchronize(self.device)
        steps = len(self.y) // self.args.batch_size
        return epochs * steps * self.args.batch_size / (time.perf_counter() - start)


def spread(values: Sequence[float], fmt: str, unit: str = "") -> str:
    """The median and, in brackets, the range: `1,565 (1,498–1,602)`, `1.59x (1.41–1.62)`."""
    return f"{statistics.median(values):{fmt}}{unit} ({min(values):{fmt}}–{max(values):{fmt}})"


def timed_in_turns(loops: dict[str, Callable[[int], float]], epochs: int, repeats: int) -> dict[str, list[float]]:
    """Each loop's images/s over `repeats` repetitions, after one untimed warm-up epoch of each; the loops take
    turns within a repetition, so the machine's drift reaches all of them alike."""
    for timer in loops.values():
        timer(1)
    rates: dict[str, list[float]] = {label: [] for label in loops}
    for _ in range(repeats):
        for label, timer in loops.items():
            rates[label].append(timer(epochs))
    return rates


RATE = re.compile(r"^rate\[(?P<method>[^/\]]+)/(?P<loop>[^\]]+)\]")


def table_from_record(record: dict) -> str:
    """The README's speed table from a benchmarks/record.py record of this script: each cell the median and range,
    over the record's runs, of each run's own median; a run's speedup is its rate over its own reference's."""
    figures = record["figures"]
    # The rows in the order the script printed them (the record's figures are sorted by name).
    order = [line.split("=")[0] for line in record["repetitions"][0]["output"].splitlines() if RATE.match(line)]
    m = record["machine"]
    lines = [
        f"{len(record['repetitions'])} runs of `{' '.join(record['command'])}` ({record['date']}, {m['cpu_model']},"
        f" {m['cores_usable']} cores, load average {record['load_before'][0]} before, {record['load_after'][0]}"
        f" after): each figure the median (min–max) of the runs' own medians, a run's speedup its median rate over"
        f" its reference's; the last line the script's own. The one-off decode of the split:"
        f" {spread(figures['decode_img_per_s']['values'], ',.0f')} img/s.",
        "",
        "| method | loop | img/s | speedup |",
        "|---|---|---|---|",
    ]
    for key in order:
        row = RATE.match(key)
        if not row:
            continue
        method, loop, rates = row["method"], row["loop"], figures[key]["values"]
        reference = figures[f"rate[{method}/reference]"]["values"]
        speedup = spread([r / ref for r, ref in zip(rates, reference, strict=True)], ".2f", "x")
        speedup = {"reference": "1x", "cached features": f"({speedup}, other computation: not counted)"}.get(
            loop, speedup
        )
        lines.append(f"| {method} | {loop} | {spread(rates, ',.0f')} | {speedup} |")
    lines += ["", f"Geometric mean over the methods: `speedup={spread(figures['speedup']['values'], '.2f', 'x')}`."]
    return "\n".join(lines)


def run_method(
    bench: Bench, decode_seconds_per_image: float, figures: list[str]
) -> tuple[float, float, float | None, dict[str, tuple[float, float | None]]]:
    """Print the method's rows (medians and ranges over --repeats), add its `key=value` lines to `figures` (printed
    after the table); return (median speedup as the pipeline runs, pipeline img/s, its MFU, the eager rows:
    precision -> (median img/s, MFU) of one run alone)."""
    args, method = bench.args, bench.method
    default_precision = "bf16" if bench.device.type == "cuda" else "fp32"
    live = ", live backbone" if method == "linear" else ""
    reference_label = "reference (fp32, decode every epoch)"
    loops: dict[str, Callable[[int], float]] = {reference_label: bench.reference}
    precision_of: dict[str, str] = {}  # each engine loop's precision

    def engine(label: str, precision: str, compile_mode: str, concurrent: int) -> None:
        loops[label] = partial(bench.engine, precision, compile_mode, concurrent)
        precision_of[label] = precision

    eager_labels = {p: f"engine {p}{live}" for p in dict.fromkeys([*args.precisions, default_precision])}
    for precision, label in eager_labels.items():
        engine(label, precision, "off", 1)
    pipeline = eager_labels[default_precision]
    if args.compile != "off":
        pipeline = f"engine {default_precision}, compile {args.compile}"
        engine(pipeline, default_precision, args.compile, 1)
    if args.concurrent > 1:
        compiled = f", compile {args.compile}" if args.compile != "off" else ""
        pipeline = f"engine {default_precision}{compiled}, {args.concurrent} runs at once"
        engine(pipeline, default_precision, args.compile, args.concurrent)
    cached_label = "(other computation) cached features: eval mode, no drop-path"
    if method == "linear":
        loops[cached_label] = partial(bench.cached_linear, default_precision)
    rates = timed_in_turns(loops, args.epochs, args.repeats)
    reference_rates = rates[reference_label]
    median = {label: statistics.median(r) for label, r in rates.items()}
    print(f"| {method} | {reference_label} | {spread(reference_rates, ',.0f')} | | | 1.00x |", flush=True)
    figures.append(f"rate[{method}/reference]={median[reference_label]:.0f}")
    mfus = {}
    for label in loops:
        if label == reference_label:
            continue
        ratios = [r / ref for r, ref in zip(rates[label], reference_rates, strict=True)]
        if label == cached_label:
            print(f"| {method} | {label} | {spread(rates[label], ',.0f')} | | | ({spread(ratios, '.2f', 'x')}) |")
            figures.append(f"rate[{method}/cached features]={median[label]:.0f}")
            continue
        mfus[label] = bench.engine_mfu(precision_of[label], median[label])
        # The decode, once per split, spread over the runs that share its cache.
        with_decode = 1 / (1 / median[label] + decode_seconds_per_image / args.epochs / args.runs_per_cache)
        mfu_text = f"{mfus[label]:.1f} %" if mfus[label] is not None else ""
        print(
            f"| {method} | {label} | {spread(rates[label], ',.0f')} | {with_decode:,.0f} | {mfu_text} |"
            f" {spread(ratios, '.2f', 'x')} |"
        )
        figures.append(f"rate[{method}/{label}]={median[label]:.0f}")
    ratio = statistics.median(r / ref for r, ref in zip(rates[pipeline], reference_rates, strict=True))
    figures.append(f"speedup[{method}]={ratio:.2f}x")
    eager = {p: (median[label], mfus[label]) for p, label in eager_labels.items() if p in args.precisions}
    return ratio, median[pipeline], mfus[pipeline], eager


def project(rates: dict[str, float], mfus: dict[str, float | None], images: int) -> None:
    """A sweep's device-hours from the measured rates, the methods weighted equally; the arithmetic shown."""
    seconds_per_image = {m: 1 / r for m, r in rates.items()}
    mean = np.mean(list(seconds_per_image.values()))
    terms = " + ".join(f"1/{r:,.0f}" for r in rates.values())
    print(f"projection: {images:,} training images x mean s/img ({terms}) / {len(rates)} = {mean * 1e6:.1f} us/img")
    print(f"projection: {images:,} x {mean * 1e6:.1f} us = {images * mean / 3600:,.1f} device-hours (training only)")
    known = [m for m in mfus.values() if m is not None]
    if known:
        print(f"mean MFU over {', '.join(mfus)}: {np.mean(known):.1f} %")


def gpu_name(device: torch.device) -> str:
    """The device as throughput.csv names it: the first data-sheet name its name contains (H100 PCIe before H100)."""
    if device.type != "cuda":
        return "CPU"
    full = torch.cuda.get_device_name(device)
    return next((name for name in PEAK_BF16_TFLOPS if name in full), full)


def throughput_rows(
    args: argparse.Namespace, device: torch.device, eager: dict[str, dict[str, tuple[float, float | None]]]
) -> list[dict[str, str]]:
    """throughput.csv rows of the eager rates of one run alone, each with how and when it was measured."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    source = (
        f"benchmarks/train_throughput.py at {commit or 'unknown commit'}, {datetime.date.today()}, on {name}: "
        f"engine eager, one run alone, batch {args.batch_size}, {args.n} images of {args.native_size} px at "
        f"{args.image_size} px, drop-path {args.drop_path}, median of {args.repeats} repetitions"
    )
    return [
        dict(
            zip(
                THROUGHPUT_COLUMNS, (gpu_name(device), args.arch, method, precision, f"{rate:.0f}", source), strict=True
            )
        )
        for method, rows in eager.items()
        for precision, (rate, _) in rows.items()
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="peftstudy_vit_mini")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--native-size", type=int, default=32, help="size of the image files (the mini study's: 32)")
    p.add_argument("--methods", nargs="+", default=["lora"])
    p.add_argument("--n", type=int, default=800, help="training images (VTAB-1K: 800)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions of every loop, in turns (at least 3)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=2, help="reference DataLoader workers (the authors: 4)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"], help="engine rows")
    p.add_argument("--compile", default="off", choices=COMPILE_MODES, help="torch.compile mode of the engine")
    p.add_argument("--concurrent", type=int, default=1, help="also time this many engine runs trained at once")
    p.add_argument("--runs-per-cache", type=int, default=1, help="runs sharing one decode (VTAB-1K: ~530)")
    p.add_argument("--sweep-images", type=int, default=0, help=f"project a sweep (VTAB-1K: {VTAB1K_SWEEP_IMAGES})")
    p.add_argument("--device", default="auto")
    p.add_argument("--table", type=Path, help="print the README's table from a record of this script; run nothing")
    p.add_argument("--csv", default="", help="append the eager rates of one run alone here (throughput.csv format)")
    args = p.parse_args()
    if args.table:
        print(table_from_record(json.loads(args.table.read_text())))
        return
    if args.repeats < 3:
        p.error(f"--repeats {args.repeats}: at least 3 (a median and a range need them)")
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), {args}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = make_images(root, args.n, args.native_size, args.classes, seed=0)
        start = time.perf_counter()
        cache = np.stack([decode(root / rel, args.image_size) for rel, _ in rows])
        decode_seconds = time.perf_counter() - start
        print(
            f"prepare (one-off decode of the split, once for all its runs): {len(rows)} images in "
            f"{decode_seconds:.2f} s ({len(rows) / decode_seconds:,.0f} img/s)"
        )
        print(f"decode_img_per_s={len(rows) / decode_seconds:.0f}")
        print(
            f"img/s and speedups: median (min–max) of {args.repeats} repetitions\n"
            "| method | loop | img/s | img/s +decode | MFU | speedup |\n|---|---|---|---|---|---|"
        )
        ratios, rates, mfus, eager, figures = [], {}, {}, {}, []
        for method in args.methods:
            bench = Bench(method, args, root, rows, cache, device)
            ratio, rates[method], mfus[method], eager[method] = run_method(bench, decode_seconds / len(rows), figures)
            ratios.append(ratio)
        print("\n".join(figures))
    if args.csv:
        new = not Path(args.csv).exists()
        with open(args.csv, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=THROUGHPUT_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerows(throughput_rows(args, device, eager))
        print(f"throughput rows appended to {args.csv}")
    if args.sweep_images:
        project(rates, mfus, args.sweep_images)
    print(f"speedup={math.exp(np.mean(np.log(ratios))):.2f}x")


if __name__ == "__main__":
    main()
