"""The training loop: AdamW, timm's epoch-wise cosine schedule, plain cross-entropy (docs/protocol.md §B.1).

Data arrive as whole uint8 NHWC arrays (the prepared cache) and stay uint8 on the device (4x less
memory than float); each batch is an index slice converted and normalised on the device, so nothing is
decoded or resized per epoch. Evaluation happens only where the caller asks: the loop itself never looks
at a held-out split.

Speed options (issues 7 and 17), none of which changes what a result means: bf16 autocast (`precision`, the
default on CUDA; fp32 stays the reference and the CPU default), fused AdamW on CUDA (`fused_adamw`),
`torch.compile` (with eager's random draws), and several runs trained at once (:func:`train_together`). The
first three round differently from the authors' plain fp32 loop (eager, torch's default AdamW): a study that
uses them declares it (studies/vtab1k.yaml, the report), and switching them off gives the authors' numerics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import sys
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from peftstudy.plan.recipe import RECIPE_CHOICES, check_choices
from peftstudy.train.resume import NO_SIGNAL, Checkpoint, Preempted, rng_state, set_rng_state, sigterm_flag

COMPILE_MODES = RECIPE_CHOICES["compile"]
# What makes a run diverged (recipe.divergence). non_finite: the authors' rule, a NaN/inf loss or weights only
# (they skip such batches and carry on, docs/protocol.md §B.1). explosion (the default) adds a last-epoch train loss
# above EXPLOSION_FACTOR x its start, the start being the loss before the first update or, if larger, that of
# a uniform guess (ln classes): a working run ends below both, and a run that ends 10x above them predicts
# confidently wrong (a probe's run at loss 1e7 scored chance and won selection).
EXPLOSION_FACTOR = 10.0


@dataclass(frozen=True)
class Recipe:
    """One run's optimisation settings. `lr_step` chooses the schedule stepping (docs/protocol.md §B.1, §I.20)."""

    epochs: int
    batch_size: int
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    eval_batch_size: int = 256
    lr_step: str = "authors"  # authors: step(epoch) at the end of `epoch` (off by one); standard: step(epoch + 1)
    # Training augmentation, on the device (docs/protocol.md §B.3-§B.5): none (VTAB-1K); hflip; crop_flip =
    # RandomResizedCrop
    # to the input size (scale 0.08-1, bicubic) + horizontal flip (CIFAR-100); crop_flips adds a vflip (RESISC45).
    augment: str = "none"
    eval_resize: int = 0  # > 0: evaluation resizes to this size, then centre-crops the input size (Resize 256 + CC 224)
    normalize: bool = True  # false: pixels in [0, 1] whatever the backbone's mean/std (the authors' VTAB-1K runs)
    drop_path: float = 0.0  # stochastic depth rate; a `drop_path` grid key overrides it
    # own: each method's stated init; authors: timm re-inits added Linears (docs/protocol.md §I.26)
    peft_init: str = "own"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere; fp32; bf16
    # torch.compile mode, or off: pays off on GPUs (reduce-overhead adds CUDA graphs), not for the CPU mini model.
    compile: str = "off"
    # AdamW fused into one kernel on CUDA: the same update rule, rounded otherwise than torch's default
    # implementation (the authors'), which false keeps.
    fused_adamw: bool = True
    # The linear probe trains on cached backbone features: `exact` when that is the same computation (no
    # stochastic depth), `always` also with drop-path (features then come without it), `never`.
    feature_cache: str = "exact"
    # Evaluation of the held-out split during training (the authors' CLIP runs, docs/protocol.md §B.4, §C.3): every
    # `eval_every` epochs (0: once, after training); stop after `early_patience` evaluations without a better
    # top-1 (0: never); `keep: best` ends with the weights of the best evaluation instead of the last epoch's.
    # In a final run the held-out split is test: it is evaluated during training only with `keep: best`, the
    # authors' best-test checkpoint (model.pt), a test-set oracle recorded as such and never the default.
    eval_every: int = 0
    early_patience: int = 0
    keep: str = "last"
    divergence: str = "explosion"  # RECIPE_CHOICES["divergence"]

    def __post_init__(self) -> None:
        check_choices(dataclasses.asdict(self))
        if (self.early_patience or self.keep == "best") and not self.eval_every:
            raise ValueError("recipe.early_patience and recipe.keep: best need recipe.eval_every > 0")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("recipe.epochs and recipe.batch_size must be positive")


@dataclass
class TrainResult:
    epochs_run: int = 0
    train_loss: float = float("nan")
    train_top1: float = float("nan")
    skipped_batches: int = 0
    diverged: bool = False
    divergence: str | None = None  # why the run counts as diverged (None: it does not)
    initial_loss: float = float("nan")  # the first batch's loss, before any update
    num_classes: int = 0
    lr_per_epoch: list[float] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)  # (epoch, held-out top-1) per evaluation
    best_epoch: int = 0
    best_top1: float = float("nan")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def bf16_on(recipe: Recipe, device: torch.device | str) -> bool:
    """Whether a run autocasts to bf16: `auto` means on CUDA only."""
    if recipe.precision == "auto":
        return torch.device(device).type == "cuda"
    return recipe.precision == "bf16"


class Images:
    """A split as uint8 NHWC on the device; indexing returns that batch as float NCHW, normalised.

    Indexing (an index tensor or a slice) gives the evaluation view: the cached pixels, or with `eval_resize`
    a resize and a centre crop to `size`. :meth:`train_batch` gives the training view, augmented per image on
    the device with torchvision's v2 transforms (drawing from torch's seeded generator).
    """

    def __init__(
        self,
        images: np.ndarray,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str,
        *,
        size: int | None = None,
        augment: str = "none",
        eval_resize: int = 0,
    ):
        from torchvision.transforms import v2

        self.data = torch.from_numpy(images).to(device)
        self.size = size or images.shape[1]
        # (x / 255 - mean) / std in the authors' order (ToTensor, then Normalize): the same float32 roundings, bit for
        # bit. One multiply-add by 1 / (255 * std) would be cheaper but rounds differently: x * (1 / 255) is one ulp
        # off x / 255 on 126 of the 256 byte values. Unnormalised, mean 0 and std 1 leave x / 255 exact.
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
        bicubic = v2.InterpolationMode.BICUBIC
        crop = [v2.RandomResizedCrop(self.size, interpolation=bicubic), v2.RandomHorizontalFlip()]
        steps = {
            "none": [],
            "hflip": [v2.RandomHorizontalFlip()],
            "crop_flip": crop,
            "crop_flips": [*crop, v2.RandomVerticalFlip()],
        }[augment]
        self.augment = v2.Compose(steps) if steps else None
        self.evaluate = None
        if eval_resize:
            self.evaluate = v2.Compose([v2.Resize(eval_resize, interpolation=bicubic), v2.CenterCrop(self.size)])
        resized = augment.startswith("crop") or eval_resize
        if not resized and images.shape[1] != self.size:
            raise ValueError(
                f"cached images are {images.shape[1]}px, the model takes {self.size}px: prepare at that size"
            )

    def __len__(self) -> int:
        return len(self.data)

    def _float(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.float().div_(255).sub_(self.mean).div_(self.std).contiguous()

    def __getitem__(self, index: torch.Tensor | slice) -> torch.Tensor:
        batch = self.data[index].permute(0, 3, 1, 2)
        return self._float(self.evaluate(batch) if self.evaluate else batch)

    def train_batch(self, index: torch.Tensor) -> torch.Tensor:
        batch = self.data[index].permute(0, 3, 1, 2)
        if self.augment is not None:
            # One draw per image, as a DataLoader would (v2 on a batch tensor draws once for all of it).
            batch = torch.stack([self.augment(image) for image in batch])
        return self._float(batch)


def to_input(
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str,
    recipe: Recipe | None = None,
    size: int | None = None,
) -> Images:
    """uint8 NHWC -> the model's input, batch by batch, with the recipe's augmentation, resizing and normalisation."""
    recipe = recipe or Recipe(epochs=1, batch_size=1)
    if not recipe.normalize:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return Images(images, mean, std, device, size=size, augment=recipe.augment, eval_resize=recipe.eval_resize)


def cosine_schedule(optimizer: torch.optim.Optimizer, recipe: Recipe):
    """timm's epoch-wise cosine with linear warmup, `warmup_prefix=False` as the authors (docs/protocol.md §B.1)."""
    from timm.scheduler import CosineLRScheduler

    return CosineLRScheduler(
        optimizer,
        t_initial=recipe.epochs,
        lr_min=recipe.min_lr,
        warmup_t=recipe.warmup_epochs,
        warmup_lr_init=recipe.warmup_lr,
        warmup_prefix=False,
    )


def _optimizer(params: list[torch.Tensor], lr: float, wd: float, fused: bool) -> torch.optim.Optimizer:
    """AdamW; with `fused`, fused into one kernel on CUDA (same update rule, fewer launches), else torch's default
    implementation, as the authors."""
    fused = fused and all(p.is_cuda for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=fused or None)


@dataclass
class Run:
    """One training run as :func:`train_together` drives it: the arguments of :func:`fit`, and the state of
    torch's global RNG (drop-path, dropout, augmentation) as it stood when the run was set up.

    Each run owns its RNG: the batch order comes from its own generator, and the global RNG, as it stood when
    the run was made, is swapped in for its steps only, so a run draws exactly what it would draw alone
    whichever runs it is interleaved with.
    """

    model: nn.Module
    x: torch.Tensor | Images
    y: torch.Tensor
    lr: float
    wd: float
    recipe: Recipe
    seed: int
    checkpoint: Checkpoint | None = None
    evaluate: Callable[[], float] | None = None
    log_every: int = 1
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    at: tuple[int, int, int] = (0, 0, 0)  # (epoch, step, steps per epoch) of the last step taken, for the log

    def __post_init__(self) -> None:
        if not self.rng:
            self.rng = rng_state(self.y.device)


def _compiled(model: nn.Module, mode: str) -> nn.Module:
    """`torch.compile(model)`, drawing its random numbers (drop-path, dropout) as eager mode does: inductor's
    own generator would give a compiled run other draws than the same run eager, so the two could only be
    compared statistically; with eager's draws they differ by rounding alone (tested)."""
    import torch._inductor.config

    torch._inductor.config.fallback_random = True
    return torch.compile(model, mode=mode)


def fit(
    model: nn.Module,
    x: torch.Tensor | Images,
    y: torch.Tensor,
    *,
    lr: float,
    wd: float,
    recipe: Recipe,
    seed: int,
    log_every: int = 1,
    checkpoint: Checkpoint | None = None,
    evaluate: Callable[[], float] | None = None,
) -> TrainResult:
    """Train the parameters of `model` that require grad on (x, y). A non-finite loss skips its batch.

    `x` is an :class:`Images` or a tensor of model inputs (the linear probe's cached features). With a
    `checkpoint`, training resumes from it and saves to it at every epoch's end; SIGTERM ends the run within a
    training step (:class:`Preempted`), and the resumed run replays the epoch from its start, so it ends with
    the same weights as one never interrupted. The checkpoint is removed once training is done.
    `evaluate` (the held-out top-1 of `model` as it stands) is called every `recipe.eval_every` epochs; it
    draws no random numbers, so evaluating never changes the training trajectory.
    """
    run = Run(model, x, y, lr, wd, recipe, seed, checkpoint, evaluate, log_every)
    return train_together([run])[0]


def first_line(error: BaseException) -> str:
    """An error's first line: CUDA's out-of-memory message goes on about the allocator's settings."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class OutOfMemoryTogether(RuntimeError):
    """Several runs trained together ran out of device memory (torch.OutOfMemoryError in one of them): the
    results of those that had finished, by position, and the error. The others stopped and are to be trained
    again, fewer at a time, from their last epoch-boundary checkpoints (or from the start without them)."""

    def __init__(self, together: int, finished: dict[int, TrainResult], error: torch.OutOfMemoryError) -> None:
        super().__init__(f"out of memory with {together} runs together: {first_line(error)}")
        self.together, self.finished = together, finished


def train_together(runs: Sequence[Run]) -> list[TrainResult]:
    """Train `runs` interleaved step by step (round robin) in this process; their results, in order.

    Several small runs keep a GPU busier than one (issue 17): on CUDA each run launches on its own stream,
    so one run's kernels fill the gaps another leaves. A run's result does not depend on its companions:
    each has its own batch-order generator, its own global-RNG state (swapped in around its steps) and its
    own tensors (tested bitwise on the CPU against the run alone). Out of device memory with several runs,
    it stops them all and raises :class:`OutOfMemoryTogether` (one run alone: the OutOfMemoryError itself).
    """
    device = runs[0].y.device
    cuda = device.type == "cuda"
    streams = [torch.cuda.Stream(device) if cuda and len(runs) > 1 else None for _ in runs]
    for stream in streams:
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(device))  # the inputs were made on the default stream
    steppers = [_steps(run) for run in runs]
    swap = len(runs) > 1  # a run alone needs its state set once, not swapped in at every step
    if not swap:
        set_rng_state(runs[0].rng, device)
    results: list[TrainResult | None] = [None] * len(runs)
    live = list(range(len(runs)))
    checkpoints = [run.checkpoint for run in runs if run.checkpoint]
    with sigterm_flag() if checkpoints else contextlib.nullcontext(dict(NO_SIGNAL)) as preempt:
        while live:
            for i in list(live):
                if swap:
                    set_rng_state(runs[i].rng, device)
                try:
                    with torch.cuda.stream(streams[i]) if streams[i] is not None else contextlib.nullcontext():
                        next(steppers[i])
                except StopIteration as done:
                    results[i] = done.value
                    live.remove(i)
                except torch.OutOfMemoryError as error:
                    if len(runs) == 1:
                        raise
                    for stepper in steppers:
                        stepper.close()  # their optimizers and activations go with their frames
                    finished = {k: r for k, r in enumerate(results) if r is not None}
                    raise OutOfMemoryTogether(len(runs), finished, error) from None
                if swap:
                    runs[i].rng = rng_state(device)
                preempt["steps"] += 1
                if preempt["stop"]:
                    # Every run resumes from its last epoch-boundary checkpoint (or from the start in its first
                    # epoch); the steps since then are replayed, so stopping here loses no bit of the result.
                    after = preempt["steps"] - preempt["signalled_at"]
                    epoch, step, steps = runs[i].at
                    print(
                        f"SIGTERM: stopped {after} training step(s) after it, in epoch {epoch} at step {step} of "
                        f"{steps}; resume from " + ", ".join(str(c.path) for c in checkpoints),
                        file=sys.stderr,
                        flush=True,
                    )
                    raise Preempted(checkpoints[0].path)
    for stream in streams:
        if stream is not None:
            torch.cuda.current_stream(device).wait_stream(stream)
    return [r for r in results if r is not None]


def take_steps(run: Run, steps: int) -> None:
    """The first `steps` training steps of `run`, alone, eager, without checkpoints or evaluation; then its
    optimizer is dropped. What a run takes in device memory is measured so (runs.py), without compiling it."""
    set_rng_state(run.rng, run.y.device)
    eager = dataclasses.replace(run.recipe, compile="off")
    stepper = _steps(dataclasses.replace(run, recipe=eager, checkpoint=None, evaluate=None, log_every=0))
    for _ in range(steps):
        try:
            next(stepper)
        except StopIteration:
            return
    stepper.close()


def _steps(run: Run) -> Generator[None, None, TrainResult]:
    """One run's training, yielding after every step; returns its :class:`TrainResult`."""
    model, x, y, recipe, checkpoint, evaluate = run.model, run.x, run.y, run.recipe, run.checkpoint, run.evaluate
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    if not params:
        raise RuntimeError("nothing to train: no parameter requires grad")
    # Decoupled weight decay on every trainable tensor, biases and norms included (docs/protocol.md §B.1).
    optimizer = _optimizer(params, run.lr, run.wd, recipe.fused_adamw)
    scheduler = cosine_schedule(optimizer, recipe)
    generator = torch.Generator().manual_seed(run.seed)
    n = len(y)
    steps = n // recipe.batch_size  # drop_last, as the authors' loader
    if steps == 0:
        raise ValueError(f"{n} training images are fewer than one batch of {recipe.batch_size}")
    result = TrainResult()
    model.train()
    forward = model if recipe.compile == "off" else _compiled(model, recipe.compile)
    graphs = recipe.compile in ("reduce-overhead", "max-autotune") and y.is_cuda
    device = y.device
    bf16 = bf16_on(recipe, device)
    start_epoch = 0
    best_params: dict[str, torch.Tensor] | None = None
    evaluating = bool(recipe.eval_every and evaluate)
    # The run's progress lines so far, kept in its checkpoint: a requeued job's rule log starts afresh (Snakemake's
    # job step removes it), so the resumed run prints its earlier attempts' lines first.
    progress: list[str] = []

    def say(line: str) -> None:
        progress.append(line)
        print(line, file=sys.stderr, flush=True)

    saved = checkpoint.load() if checkpoint else None
    if saved is not None:
        with torch.no_grad():
            for name, p in named:
                p.copy_(saved["params"][name])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        set_rng_state(saved["rng"], device)
        result = TrainResult(**saved["result"])
        best_params = saved["best_params"]
        start_epoch = result.epochs_run
        scheduler.step(start_epoch - 1 if recipe.lr_step == "authors" else start_epoch)
        earlier = saved.get("progress", [])
        print("\n".join(["earlier attempts of this run (from its checkpoint):", *earlier]), file=sys.stderr)
        progress.extend(earlier)
        say(f"resumed from {checkpoint.path} after epoch {start_epoch}")
    # With fused AdamW (CUDA) the skip of a non-finite batch stays on the device: the fused kernel leaves the
    # weights, moments and step count alone when `found_inf` is set (the mechanism GradScaler uses), so the
    # host never waits for the GPU inside an epoch. Elsewhere the host checks the loss, which costs nothing there.
    on_device_skip = bool(optimizer.defaults.get("fused"))
    start = time.time()
    for epoch in range(start_epoch, recipe.epochs):
        result.lr_per_epoch.append(optimizer.param_groups[0]["lr"])
        order = torch.randperm(n, generator=generator).to(device)
        totals = torch.zeros(4, device=device, dtype=torch.float64)  # loss sum, correct, seen, skipped
        for step in range(steps):
            if step:
                yield  # the last step's yield comes after the epoch's bookkeeping (and checkpoint)
            run.at = (epoch + 1, step + 1, steps)
            idx = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            xb = x.train_batch(idx) if isinstance(x, Images) else x[idx]
            yb = y[idx]
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are no longer read
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = forward(xb)
            loss = nn.functional.cross_entropy(logits.float(), yb)
            if epoch == 0 and step == 0:  # the start of the explosion rule: one host sync per run
                result.initial_loss, result.num_classes = loss.item(), logits.shape[1]
            finite = torch.isfinite(loss)
            if not on_device_skip and not finite.item():
                totals[3] += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if on_device_skip:
                optimizer.found_inf = (~finite).float()
            optimizer.step()
            kept = finite.double()
            batch = torch.stack(
                [
                    torch.where(finite, loss.detach().double(), 0.0) * len(yb),
                    (logits.argmax(1) == yb).sum().double() * kept,
                    kept * len(yb),
                    1.0 - kept,
                ]
            )
            totals += batch
        loss_sum, correct, seen, skipped = totals.tolist()  # the epoch's one host sync
        scheduler.step(epoch if recipe.lr_step == "authors" else epoch + 1)
        result.epochs_run = epoch + 1
        result.skipped_batches += int(skipped)
        result.train_loss = loss_sum / seen if seen else float("nan")
        result.train_top1 = 100.0 * correct / seen if seen else float("nan")
        if run.log_every and ((epoch + 1) % run.log_every == 0 or epoch + 1 == recipe.epochs):
            say(
                f"epoch {epoch + 1}/{recipe.epochs} lr {result.lr_per_epoch[-1]:.2e} loss {result.train_loss:.4f} "
                f"top1 {result.train_top1:.1f} skipped {int(skipped)} ({time.time() - start:.1f}s)"
            )
        stop = False
        if evaluating and ((epoch + 1) % recipe.eval_every == 0 or epoch + 1 == recipe.epochs):
            top1 = evaluate()
            model.train()
            result.evals.append((epoch + 1, top1))
            # Strictly better only: the first of equal evaluations stays the best (the authors' rule).
            if not top1 <= result.best_top1:
                result.best_top1, result.best_epoch = top1, epoch + 1
                if recipe.keep == "best":
                    best_params = {name: p.detach().clone() for name, p in named}
            since_best = sum(1 for e, _ in result.evals if e > result.best_epoch)
            stop = bool(recipe.early_patience) and since_best >= recipe.early_patience
            say(f"epoch {epoch + 1}: held-out top1 {top1:.2f} (best {result.best_top1:.2f})")
        if checkpoint and epoch + 1 < recipe.epochs and not stop:
            checkpoint.save(
                {
                    "params": {name: p.detach().cpu() for name, p in named},
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "rng": rng_state(device),
                    "result": dataclasses.asdict(result),
                    "best_params": best_params,
                    "progress": progress,
                }
            )
        if stop:
            say(f"early stop: {recipe.early_patience} evaluations without a better top-1")
            break
        if epoch + 1 < recipe.epochs:
            yield
    if best_params is not None:
        with torch.no_grad():
            for name, p in named:
                p.copy_(best_params[name])
    if checkpoint:
        checkpoint.clear()
    bad_weights = any(not torch.isfinite(p).all() for p in params)
    result.divergence = divergence(result, bad_weights, recipe.divergence)
    result.diverged = result.divergence is not None
    return result


def divergence(result: TrainResult, bad_weights: bool, rule: str) -> str | None:
    """Why a finished run counts as diverged under `rule` (RECIPE_CHOICES["divergence"]), or None. Pure."""
    if bad_weights:
        return "non-finite weights"
    if not math.isfinite(result.train_loss):
        return "every batch of the last epoch had a non-finite loss"
    if rule == "non_finite":
        return None
    uniform = math.log(result.num_classes) if result.num_classes > 1 else math.nan
    starts = [v for v in (result.initial_loss, uniform) if math.isfinite(v)]
    start = max(starts, default=math.inf)
    if result.train_loss > EXPLOSION_FACTOR * start:
        return (
            f"last-epoch train loss {result.train_loss:.4g} > {EXPLOSION_FACTOR:g} x its start {start:.4g} "
            f"(max of the initial loss {result.initial_loss:.4g} and ln {result.num_classes} classes)"
        )
    return None


@torch.no_grad()
def _in_batches(model: nn.Module, fn, x: torch.Tensor | Images, batch_size: int, bf16: bool) -> torch.Tensor:
    """fn(batch) over `x` in eval mode, float32, concatenated (on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for i in range(0, len(x), batch_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs.append(fn(x[i : i + batch_size]).float())
    return torch.cat(outputs)


def features(model: nn.Module, x: torch.Tensor | Images, batch_size: int, bf16: bool = False) -> torch.Tensor:
    """A timm ViT's pre-logits features (the head's input) of `x`, in eval mode, float32 on x's device."""

    def pre_logits(batch: torch.Tensor) -> torch.Tensor:
        return model.forward_head(model.forward_features(batch), pre_logits=True)

    return _in_batches(model, pre_logits, x, batch_size, bf16)


def predict(model: nn.Module, x: torch.Tensor | Images, batch_size: int, bf16: bool = False) -> torch.Tensor:
    """Logits of `model` on `x` in eval mode, float32, on the CPU."""
    return _in_batches(model, model, x, batch_size, bf16).cpu()


def scores(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Top-1 (%) and mean cross-entropy of logits against labels."""
    y = y.cpu()
    finite = bool(torch.isfinite(logits).all())
    loss = nn.functional.cross_entropy(logits, y).item() if finite else float("nan")
    top1 = 100.0 * (logits.argmax(1) == y).float().mean().item()
    return {"top1": top1, "loss": loss}
