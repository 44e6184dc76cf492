"""The training loop: AdamW, timm's epoch-wise cosine schedule, plain cross-entropy (STUDY.md B.1).

Data arrive as whole uint8 NHWC arrays (the prepared cache) and are converted once; batches are
index slices, so nothing is decoded per epoch. Evaluation happens only where the caller asks: the
loop itself never looks at a held-out split.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Recipe:
    """One run's optimisation settings. `lr_step` chooses the schedule stepping (STUDY.md B.1, I.20)."""

    epochs: int
    batch_size: int
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    eval_batch_size: int = 256
    lr_step: str = "authors"  # authors: step(epoch) at the end of `epoch` (off by one); standard: step(epoch + 1)
    hflip: bool = False  # random horizontal flip (pretraining only: VTAB-1K trains without augmentation)
    drop_path: float = 0.0  # stochastic depth rate; a `drop_path` grid key overrides it
    peft_init: str = "own"  # own: each method's stated init; authors: timm re-inits added Linears (STUDY.md I.26)

    def __post_init__(self) -> None:
        if self.lr_step not in ("authors", "standard"):
            raise ValueError(f"recipe.lr_step {self.lr_step!r}: use authors or standard")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("recipe.epochs and recipe.batch_size must be positive")


@dataclass
class TrainResult:
    epochs_run: int = 0
    train_loss: float = float("nan")
    train_top1: float = float("nan")
    skipped_batches: int = 0
    diverged: bool = False
    lr_per_epoch: list[float] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_input(images: np.ndarray, mean: Sequence[float], std: Sequence[float], device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1], normalised with the backbone's mean/std (identity for [0, 1] input)."""
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    wd: float,
    recipe: Recipe,
    seed: int,
    log_every: int = 1,
) -> TrainResult:
    """Train the parameters of `model` that require grad on (x, y). A non-finite loss skips its batch."""
    from timm.scheduler import CosineLRScheduler

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("nothing to train: no parameter requires grad")
    # Decoupled weight decay on every trainable tensor, biases and norms included (STUDY.md B.1).
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=recipe.epochs,
        lr_min=recipe.min_lr,
        warmup_t=recipe.warmup_epochs,
        warmup_lr_init=recipe.warmup_lr,
        warmup_prefix=False,
    )
    generator = torch.Generator().manual_seed(seed)
    n = len(y)
    steps = n // recipe.batch_size  # drop_last, as the authors' loader
    if steps == 0:
        raise ValueError(f"{n} training images are fewer than one batch of {recipe.batch_size}")
    result = TrainResult()
    model.train()
    start = time.time()
    for epoch in range(recipe.epochs):
        result.lr_per_epoch.append(optimizer.param_groups[0]["lr"])
        order = torch.randperm(n, generator=generator).to(x.device)
        loss_sum, correct, seen, skipped = 0.0, 0, 0, 0
        for step in range(steps):
            idx = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            xb, yb = x[idx], y[idx]
            if recipe.hflip:
                flip = torch.rand(len(idx), generator=generator).to(x.device) < 0.5
                xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            if not torch.isfinite(loss):
                skipped += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
        scheduler.step(epoch if recipe.lr_step == "authors" else epoch + 1)
        result.epochs_run = epoch + 1
        result.skipped_batches += skipped
        result.train_loss = loss_sum / seen if seen else float("nan")
        result.train_top1 = 100.0 * correct / seen if seen else float("nan")
        if log_every and ((epoch + 1) % log_every == 0 or epoch + 1 == recipe.epochs):
            print(
                f"epoch {epoch + 1}/{recipe.epochs} lr {result.lr_per_epoch[-1]:.2e} loss {result.train_loss:.4f} "
                f"top1 {result.train_top1:.1f} skipped {skipped} ({time.time() - start:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
    # A run whose whole last epoch was skipped, or whose weights went non-finite, has diverged.
    last_epoch_dead = not math.isfinite(result.train_loss)
    bad_weights = any(not torch.isfinite(p).all() for p in params)
    result.diverged = last_epoch_dead or bad_weights
    return result


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of `model` on `x` in eval mode, float32, on the CPU."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)])


def scores(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Top-1 (%) and mean cross-entropy of logits against labels."""
    y = y.cpu()
    finite = bool(torch.isfinite(logits).all())
    loss = nn.functional.cross_entropy(logits, y).item() if finite else float("nan")
    top1 = 100.0 * (logits.argmax(1) == y).float().mean().item()
    return {"top1": top1, "loss": loss}
