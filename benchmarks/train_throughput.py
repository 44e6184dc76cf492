"""Training throughput: the authors' loop (STUDY.md B.1) against peftstudy's engine, same method, model, data.

(a) reference: fp32; each epoch, DataLoader workers decode every image file and resize it (PIL bicubic);
(b) engine: the split decoded once into a uint8 cache (timed apart: the prepare rule does it once per
dataset for all of its ~530 runs), kept on the device, converted per batch; bf16 autocast on CUDA
(--precision), fused AdamW on CUDA, optional torch.compile; the linear probe on cached features.

Both train the same freshly initialised model (seeded alike) for --epochs epochs after one untimed warm-up
epoch (worker start-up, cuDNN autotuning, compilation). Images/s = trained images / wall time. On CUDA it
also prints the engine's MFU: measured FLOPs of a training step (torch's FlopCounterMode) x steps/s over
the device's dense bf16 peak. The last line is `speedup=<x>x`: the engine over the reference for one
method, or their geometric mean over several (each method's ratio is printed above it).

    python benchmarks/train_throughput.py --methods lora                          # CPU, the mini ViT
    python benchmarks/train_throughput.py --arch vit_base_patch16_224 --image-size 224 --native-size 320 \
        --n 512 --batch-size 64 --methods linear bitfit lora rand_h_adapter full --compile reduce-overhead   # a GPU
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from peftstudy.data.layout import decode
from peftstudy.models import pick_device
from peftstudy.train import reference
from peftstudy.train.engine import COMPILE_MODES, Recipe, bf16_on, features, fit, seed_everything, to_input
from peftstudy.train.runs import build

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name fragment.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}


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


def run_method(method: str, args: argparse.Namespace, root: Path, rows, cache: np.ndarray, device) -> float:
    labels = np.array([label for _, label in rows], dtype=np.int64)
    backbone = {"arch": args.arch, "weights": None, "sha256": None, "keep_head": False}
    hp = {"lr": 1e-3, "wd": 1e-4}
    base = dict(batch_size=args.batch_size, warmup_epochs=0, drop_path=args.drop_path, lr_step="authors")
    ours = Recipe(epochs=args.epochs, precision=args.precision, compile=args.compile, **base)
    bf16 = bf16_on(ours, device)

    def fresh(recipe: Recipe):
        seed_everything(0)
        model, *_ = build(method, hp, backbone, args.classes, recipe, device)
        return model

    # (a) the reference loop, after one warm-up epoch.
    data = reference.ImageFiles(root, rows, args.image_size)
    ref_recipe = Recipe(epochs=args.epochs, precision="fp32", **base)
    warm = Recipe(epochs=1, precision="fp32", **base)
    reference.fit(fresh(warm), data, lr=1e-3, wd=1e-4, recipe=warm, seed=0, workers=args.workers, device=device)
    _, ref_rate = reference.fit(
        fresh(ref_recipe), data, lr=1e-3, wd=1e-4, recipe=ref_recipe, seed=0, workers=args.workers, device=device
    )

    # (b) the engine, from the uint8 cache; the linear probe from cached features (their pass is timed).
    y = torch.from_numpy(labels).to(device)

    def engine_run(recipe: Recipe) -> tuple[float, torch.nn.Module]:
        model = fresh(recipe)
        cfg = model.pretrained_cfg
        synchronize(device)
        start = time.perf_counter()
        x = to_input(cache, cfg["mean"], cfg["std"], device)
        net = model
        if method == "linear":
            x, net = features(model, x, recipe.eval_batch_size, bf16=bf16), model.head
        result = fit(net, x, y, lr=1e-3, wd=1e-4, recipe=recipe, seed=0, log_every=0)
        synchronize(device)
        trained = result.epochs_run * (len(y) // recipe.batch_size) * recipe.batch_size
        return trained / (time.perf_counter() - start), model

    engine_run(Recipe(epochs=1, precision=args.precision, compile=args.compile, **base))
    our_rate, model = engine_run(ours)
    ratio = our_rate / ref_rate
    mode = (
        ("bf16" if bf16 else "fp32")
        + (f", compile {args.compile}" if args.compile != "off" else "")
        + (", cached features" if method == "linear" else "")
    )
    line = f"{method}: reference {ref_rate:.1f} img/s, engine {our_rate:.1f} img/s ({mode})"
    if device.type == "cuda" and method != "linear":
        peak = peak_flops(device)
        x = to_input(cache[: args.batch_size], model.pretrained_cfg["mean"], model.pretrained_cfg["std"], device)
        flops = step_flops(model, x[:], y[: args.batch_size], bf16) / args.batch_size
        line += f", {flops / 1e9:.1f} GFLOP/img"
        if peak:
            line += f", MFU {100 * flops * our_rate / peak:.1f}%"
    print(f"{line}; speedup[{method}]={ratio:.2f}x", flush=True)
    return ratio


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="peftstudy_vit_mini")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--native-size", type=int, default=32, help="size of the image files (the mini study's: 32)")
    p.add_argument("--methods", nargs="+", default=["lora"])
    p.add_argument("--n", type=int, default=800, help="training images (VTAB-1K: 800)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=2, help="reference DataLoader workers (the authors: 4)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--compile", default="off", choices=COMPILE_MODES, help="torch.compile mode of the engine")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), {args}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = make_images(root, args.n, args.native_size, args.classes, seed=0)
        start = time.perf_counter()
        cache = np.stack([decode(root / rel, args.image_size) for rel, _ in rows])
        print(f"prepare (once per dataset split): {len(rows) / (time.perf_counter() - start):.0f} img/s decoded")
        ratios = [run_method(m, args, root, rows, cache, device) for m in args.methods]
    print(f"speedup={math.exp(np.mean(np.log(ratios))):.2f}x")


if __name__ == "__main__":
    main()
