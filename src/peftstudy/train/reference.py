"""The authors' training loop (docs/protocol.md §B.1, §I.25), kept as the reference the engine is measured against.

fp32 throughout; every epoch, DataLoader workers open each image file, decode it and resize it to the
input size with PIL's bicubic filter (the authors' transform), then `ToTensor` ([0, 1], no
normalisation); AdamW with torch's defaults; shuffle with `drop_last`; a non-finite loss skips its batch.
The schedule is the engine's (timm's cosine, stepped as the recipe says), so the two differ only in how
data reach the model and in precision. Not used by the pipeline: by `benchmarks/train_throughput.py` and
the tests that compare the two.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from peftstudy.data.layout import decode
from peftstudy.train.engine import Recipe, TrainResult, cosine_schedule


class ImageFiles(Dataset):
    """(image, label) pairs read from files on every access, as the authors' `ImageFilelist`."""

    def __init__(self, root: str | Path, rows: list[tuple[str, int]], image_size: int) -> None:
        self.root, self.rows, self.image_size = Path(root), rows, image_size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rel, label = self.rows[i]
        pixels = decode(self.root / rel, self.image_size)
        return torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float().div(255.0), label


class EngineOrder(Sampler[int]):
    """The engine's batch order: one `randperm` per epoch from a generator seeded with the run's seed. Fed to
    this loop, it takes the authors' shuffle out of a comparison with the engine, leaving the data path."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.generator = n, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


def fit(
    model: nn.Module,
    data: ImageFiles,
    *,
    lr: float,
    wd: float,
    recipe: Recipe,
    seed: int,
    workers: int,
    device: torch.device | str,
    engine_order: bool = False,
) -> tuple[TrainResult, float]:
    """Train as the authors do; returns the result and the training images per second. `engine_order`: shuffle
    as the engine does (:class:`EngineOrder`) instead of with the DataLoader's own sampler."""
    device = torch.device(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    scheduler = cosine_schedule(optimizer, recipe)
    loader = DataLoader(
        data,
        batch_size=recipe.batch_size,
        shuffle=None if engine_order else True,
        sampler=EngineOrder(len(data), seed) if engine_order else None,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )
    result, seen_total = TrainResult(), 0
    model.train()
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        result.lr_per_epoch.append(optimizer.param_groups[0]["lr"])
        loss_sum, correct, seen = 0.0, 0, 0
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            if not math.isfinite(loss.item()):
                result.skipped_batches += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
        scheduler.step(epoch if recipe.lr_step == "authors" else epoch + 1)
        result.epochs_run = epoch + 1
        result.train_loss = loss_sum / seen if seen else float("nan")
        result.train_top1 = 100.0 * correct / seen if seen else float("nan")
        seen_total += seen
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, seen_total / (time.perf_counter() - start)
