"""Tune and final runs: grid points (or seeds) of one method on one dataset.

A tune run sees train and val caches only; a final run sees train+val and test, and evaluates test
once, after the last epoch. Both write a schema-checked metrics.json; a final also writes the test
logits and the trained (PEFT-only) tensors.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

from peftstudy import methods, provenance
from peftstudy.io import load_npz, save_npz, write_json
from peftstudy.models import create_backbone, pick_device, save_safetensors
from peftstudy.plan import depends
from peftstudy.plan.specs import Backbone, FinalSpec, GridPoint, Options, TuneSpec
from peftstudy.train.cache import TuneResults
from peftstudy.train.engine import (
    Images,
    OutOfMemoryTogether,
    Recipe,
    Run,
    TrainResult,
    bf16_on,
    features,
    first_line,
    predict,
    scores,
    seed_everything,
    take_steps,
    to_input,
    train_together,
)
from peftstudy.train.resume import Checkpoint


def build(
    method: str, hp: Mapping[str, Any], backbone: Backbone, num_classes: int, recipe: Recipe, device: torch.device
) -> tuple[nn.Module, list[str], methods.PointRecipe, Any]:
    """Backbone with its weights, the method injected, everything but the method's tensors and the head frozen; the
    point's recipe settings (lr, wd, drop_path) and the method's Config, typed (methods.split_hp)."""
    point_recipe, cfg = methods.split_hp(method, hp)
    drop_path = point_recipe.drop_path_or(recipe.drop_path)
    weights = {"weights": backbone.weights, "sha256": backbone.sha256}
    if backbone.head:  # CLIP: the zero-shot head built from its text tower (docs/protocol.md §A.1)
        from peftstudy.models.clip import create_clip

        model = create_clip(
            backbone.arch,
            num_classes,
            head=backbone.head,
            head_sha256=backbone.head_sha256,
            drop_path=drop_path,
            device=device,
            **weights,
        )
    else:
        model = create_backbone(
            backbone.arch,
            num_classes,
            keep_head=backbone.keep_head,
            drop_path=drop_path,
            device=device,
            **weights,
        )
    trainable = methods.apply(model, method, cfg, linear_init=recipe.peft_init)
    return model, trainable, point_recipe, cfg


def count(model: nn.Module, names: list[str]) -> tuple[int, int]:
    """(trainable parameters outside the head, head parameters)."""
    params = dict(model.named_parameters())
    head = set(methods.head_names(model))
    return sum(params[n].numel() for n in names if n not in head), sum(params[n].numel() for n in head)


def _digest(path: str | None, pinned: str | None, what: str, config_key: str) -> str | None:
    """A file's sha256 (checked against its pinned sum), or None when the run reads no such file."""
    return depends.verified_sha256(path, pinned, what, config_key) if path else None


class JobDependencies:
    """The :class:`~peftstudy.plan.depends.Dependencies` of a job's runs: its spec's settings, its input files
    hashed once by role (the spec's field names: train, val or test, manifest; the backbone's weights and head,
    checked against the config's pinned sums, so a swapped weights file fails every job that would use it, even
    one that reuses all its points), the device and precision resolved as they will run."""

    def __init__(self, spec: TuneSpec | FinalSpec, options: Options) -> None:
        self.spec, self.phase = spec, spec.stage
        run = spec.run
        self.device = pick_device(run.device, options.threads)
        self.bf16 = bf16_on(Recipe(**run.recipe), self.device)
        backbone = run.backbone
        files = spec.inputs()
        self.data = {role: depends.file_sha256(files[role]) for role in ("train", held_out_split(spec), "manifest")}
        self.weights = _digest(backbone.weights, backbone.sha256, "backbone weights", "backbone.sha256")
        self.head = _digest(backbone.head, backbone.head_sha256, "zero-shot head", "zero_shot_head")
        self.code = depends.code_digest(run.method)

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def of(self, point: GridPoint, seed: int) -> depends.Dependencies:
        run = self.spec.run
        backbone = dataclasses.asdict(run.backbone)
        return depends.Dependencies(
            settings=depends.settings(run.method, self.phase, point.gp, point.hp, run.recipe, backbone, seed),
            data=self.data,
            backbone_weights=self.weights,
            zero_shot_head=self.head,
            code=self.code,
            device=self.device.type,
            precision=self.precision,
            torch=torch.__version__,
            timm=timm.__version__,
        )


class Session:
    """What the runs of one process share: device, recipe, the training split, the held-out split, and the
    linear probe's cached features.

    A process may train several grid points (or seeds) of one (method, dataset), which saves the start-up,
    data loading and weight reading of each (issue 7), and may train them at once (`concurrent`, issue 17).
    Every run reseeds before building its model and owns its RNG while training, so its result is the same
    whichever runs share its process.
    """

    def __init__(self, spec: TuneSpec | FinalSpec, options: Options, runs: int, job: JobDependencies) -> None:
        self.spec = spec
        self.run = spec.run
        self.job = job
        self.device = job.device
        self.recipe = Recipe(**spec.run.recipe)
        self.bf16 = job.bf16
        # Runs trained at once, interleaved: `--concurrent`, or by default on a GPU (which one run leaves idle at
        # the protocol's batch size) as many of the job's as fit in its memory (None: measured as training starts,
        # _runs_that_fit), and one at a time on the CPU (no idle units to fill).
        self.concurrent: int | None = options.concurrent or (None if self.device.type == "cuda" and runs > 1 else 1)
        self.train = load_npz(spec.train)
        if len(self.train["labels"]) < self.recipe.batch_size:  # before any model is built
            raise ValueError(
                f"{spec.train}: {len(self.train['labels'])} training images of {self.run.dataset} are fewer than one "
                f"batch: lower experiments.{self.run.experiment}.recipe.batch_size ({self.recipe.batch_size})"
            )
        self._held_out_path = spec.inputs()[held_out_split(spec)]
        self._held_out: dict[str, Any] | None = None
        self._inputs: dict[str, Images] = {}
        self._features: dict[str, torch.Tensor] = {}

    @property
    def held_out(self) -> dict[str, Any]:
        """Read on first use (a tune job's val, a final job's test)."""
        if self._held_out is None:
            self._held_out = load_npz(self._held_out_path)
        return self._held_out

    def inputs(self, split: str, model: nn.Module) -> Images:
        if split not in self._inputs:
            data = self.train if split == "train" else self.held_out
            cfg = model.pretrained_cfg
            size = cfg["input_size"][-1]
            self._inputs[split] = to_input(data["images"], cfg["mean"], cfg["std"], self.device, self.recipe, size)
        return self._inputs[split]

    def features(self, split: str, model: nn.Module) -> torch.Tensor:
        """The frozen backbone's pre-logits features of a split, computed once per process in eval mode."""
        if split not in self._features:
            self._features[split] = features(model, self.inputs(split, model), self.recipe.eval_batch_size, self.bf16)
        return self._features[split]

    def device_bytes(self) -> int:
        """Device memory the cached splits and features take: shared by every run of the process."""
        return sum(x.data.nbytes for x in self._inputs.values()) + sum(f.nbytes for f in self._features.values())

    def held_out_bytes_to_come(self) -> int:
        """Device memory the held-out split's pixels will take when first evaluated (0 once they are there)."""
        return 0 if "held_out" in self._inputs else self.held_out["images"].nbytes

    def uses_features(self, method: str, drop_path: float) -> bool:
        """The linear probe on cached features is the same computation only without stochastic depth, and never
        with augmentation (each epoch would see other pixels)."""
        mode = self.recipe.feature_cache
        if method != "linear" or self.recipe.augment != "none":
            return False
        return mode == "always" or (mode == "exact" and drop_path == 0)


@dataclasses.dataclass
class _Pending:
    """A run set up and ready to train (its model built, its RNG captured), and how to score it after."""

    point: GridPoint
    seed: int
    model: nn.Module
    trainable: list[str]
    cfg: Any
    cached: bool
    run: Run
    held_out_scores: Callable[[], tuple[torch.Tensor, dict[str, float]]]
    latest: list[tuple[torch.Tensor, dict[str, float]]]


def _set_up(session: Session, point: GridPoint, seed: int, phase: str) -> _Pending:
    """Build one grid point's model for one seed and the :class:`Run` that trains it."""
    run_settings, recipe, device = session.run, session.recipe, session.device
    train = session.train
    seed_everything(seed)
    model, trainable, point_recipe, cfg = build(
        run_settings.method, point.hp, run_settings.backbone, int(train["num_classes"]), recipe, device
    )
    y = torch.from_numpy(train["labels"]).to(device)
    cached = session.uses_features(run_settings.method, point_recipe.drop_path_or(recipe.drop_path))
    # The cached probe trains the head alone on features; the same seed gives the same head init and batch order.
    net, x_train = (model.head, session.features("train", model)) if cached else (model, session.inputs("train", model))
    checkpoint = None
    if run_settings.resume_dir:
        path = Path(run_settings.resume_dir) / f"{phase}-{point.gp}-seed{seed}.pt"
        checkpoint = Checkpoint(path, session.job.of(point, seed))

    def held_out_scores() -> tuple[torch.Tensor, dict[str, float]]:
        x_held = session.features("held_out", model) if cached else session.inputs("held_out", model)
        logits = predict(net, x_held, recipe.eval_batch_size, bf16=session.bf16)
        return logits, scores(logits, torch.from_numpy(session.held_out["labels"]))

    # The latest evaluation during training. fit evaluates the last epoch it runs, so with `keep: last` that
    # is the score of the weights training ends with, and it is not computed a second time.
    latest: list[tuple[torch.Tensor, dict[str, float]]] = []

    def evaluate() -> float:
        latest[:] = [held_out_scores()]
        return latest[0][1]["top1"]

    run = Run(
        net,
        x_train,
        y,
        lr=point_recipe.lr,
        wd=point_recipe.wd,
        recipe=recipe,
        seed=seed,
        checkpoint=checkpoint,
        # A final run's held-out split is test: it is looked at during training only for the authors'
        # best-test checkpoint (keep: best, labelled as a test-set oracle), never to stop early otherwise.
        evaluate=evaluate if phase == "tune" or recipe.keep == "best" else None,
    )
    return _Pending(point, seed, model, trainable, cfg, cached, run, held_out_scores, latest)


def _train(session: Session, runs: list[tuple[GridPoint, int]], phase: str, split: str):
    """Train (grid point, seed) runs, `session.concurrent` at a time (or as many as fit), interleaved; yield each
    one's position in `runs` and its (model, trainable names, metrics, logits, labels) as its group ends.

    Out of GPU memory with several runs together, the runs that had finished are kept, the number at a time is
    lowered (_fewer) and the others train again from their last epoch-boundary checkpoints (with --resume-dir;
    else from the start): each run's result is the same bytes as if nothing had happened, since a resumed run
    ends as one never interrupted and no run depends on its neighbours."""
    together = session.concurrent or _runs_that_fit(session, runs, phase)
    todo = list(range(len(runs)))
    wall = [0.0] * len(runs)  # runs trained together share their wall time equally, over every attempt
    while todo:
        ids, todo = todo[:together], todo[together:]
        group: list[_Pending] = []
        start = time.time()
        try:
            group.extend(_set_up(session, *runs[i], phase) for i in ids)
            start = time.time()  # the wall time of training, not of building the models
            finished = dict(enumerate(train_together([pending.run for pending in group])))
            out_of_memory = ""
        except OutOfMemoryTogether as error:
            finished, out_of_memory = error.finished, str(error)
        except torch.OutOfMemoryError as error:  # building the group's models, or one run alone
            if len(ids) == 1:  # nothing fewer to try
                _note_alone_does_not_fit(session, error)
                raise
            finished, out_of_memory = {}, f"out of memory setting up {len(ids)} runs together: {first_line(error)}"
        for i in ids:
            wall[i] += (time.time() - start) / len(ids)
        done = [(ids[k], group[k], finished[k]) for k in sorted(finished)]
        if out_of_memory:
            stopped = [i for k, i in enumerate(ids) if k not in finished]
            del group  # the stopped runs' models, before their memory is handed back
            _free_device_memory(session.device)
            together = _fewer(len(ids))
            where = (
                f"their last epoch checkpoints in {session.run.resume_dir} (their start before the first)"
                if session.run.resume_dir
                else "their start (no resume_dir, so no checkpoints)"
            )
            print(
                f"{out_of_memory}. {len(done)} had finished; {together} at a time from now on: the other "
                f"{len(stopped)} train again from {where}",
                flush=True,
            )
            todo = stopped + todo
        for i, pending, result in done:
            yield i, _finish(session, pending, result, wall[i], phase, split)


def _note_alone_does_not_fit(session: Session, error: torch.OutOfMemoryError) -> None:
    error.add_note(
        f"one {session.run.method} run alone does not fit in the memory free on {session.device}: free the GPU, "
        f"or lower experiments.{session.run.experiment}.recipe.batch_size (a change of protocol)"
    )


def _fewer(together: int) -> int:
    """Runs at a time after `together` ran out of memory: a quarter fewer (at least one fewer), so that a
    footprint measured a little low costs a few steps down, not half the GPU's throughput."""
    return max(1, min(together - 1, 3 * together // 4))


# The share of the free GPU memory the runs trained at once may fill: the rest is left for what one run's first
# steps do not show (the caching allocator's rounding and per-stream pools, evaluation batches, cuBLAS workspaces).
MEMORY_MARGIN = 0.9
PROBE_STEPS = 2  # the first step creates the optimizer state; the second is a step in the steady state


def _runs_that_fit(session: Session, runs: list[tuple[GridPoint, int]], phase: str) -> int:
    """How many of the job's runs fit in the GPU's free memory at once.

    One run's footprint is measured: its first run set up and trained for PROBE_STEPS steps alone (eager, no
    checkpoint, no evaluation), its peak of allocated memory (weights, gradients, optimizer state and activations)
    less what was allocated before it and what the session's shared splits grew by. The probe is then dropped and
    the runs start from their own seeds, so it changes no result; its pixels stay, as every run shares them. A
    compiled run usually takes less than eager, one with CUDA graphs (their memory pools) more: where the
    measure falls short, an out-of-memory error lowers the count (_train)."""
    device = session.device
    shared = session.device_bytes()
    before = torch.cuda.memory_allocated(device)
    probe = _set_up(session, *runs[0], phase)
    shared_added = session.device_bytes() - shared
    torch.cuda.reset_peak_memory_stats(device)
    try:
        take_steps(probe.run, PROBE_STEPS)
    except torch.OutOfMemoryError as error:
        _note_alone_does_not_fit(session, error)
        raise
    footprint = torch.cuda.max_memory_allocated(device) - before - shared_added
    del probe
    _free_device_memory(device)
    free, _ = torch.cuda.mem_get_info(device)
    available = free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    to_come = session.held_out_bytes_to_come()
    together = runs_that_fit(footprint, available - to_come, len(runs))
    print(
        f"GPU memory: one {session.run.method} run takes {footprint / 2**30:.2f} GiB at its peak (measured over "
        f"its first {PROBE_STEPS} steps), {available / 2**30:.1f} GiB free ({to_come / 2**30:.2f} GiB of it for the "
        f"held-out split to come), {MEMORY_MARGIN:.0%} of the rest usable: {together} of the job's {len(runs)} "
        "runs at a time",
        flush=True,
    )
    return together


def runs_that_fit(footprint: int, available: int, runs: int) -> int:
    """Runs of `footprint` bytes each that fit in MEMORY_MARGIN of `available` bytes, between 1 and `runs`."""
    return max(1, min(runs, int(MEMORY_MARGIN * available) // max(footprint, 1)))


def _free_device_memory(device: torch.device) -> None:
    """Hand the memory of dropped runs back: their tensors may sit in reference cycles (frames, tracebacks), and
    the caching allocator keeps freed blocks per stream until emptied."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _finish(session: Session, pending: _Pending, result: TrainResult, wall: float, phase: str, split: str):
    """Score a trained run's held-out split (once) and write up its metrics."""
    run_settings, recipe, point = session.run, session.recipe, pending.point
    latest = pending.latest
    logits, score = latest[0] if latest and recipe.keep == "last" else pending.held_out_scores()
    trainable_params, head_params = count(pending.model, pending.trainable)
    reason = result.divergence or (None if np.isfinite(score["loss"]) else f"non-finite {split} logits")
    metrics = {
        "status": "diverged" if reason else "ok",
        "divergence": {"rule": recipe.divergence, "reason": reason},
        "phase": phase,
        "experiment": run_settings.experiment,
        "dataset": run_settings.dataset,
        "method": run_settings.method,
        "gp": point.gp,
        "hp": dict(point.hp),
        "method_config": dataclasses.asdict(pending.cfg),
        "recipe": dataclasses.asdict(recipe),
        "seed": pending.seed,
        "metrics": {
            "train_loss": _finite(result.train_loss),
            "train_top1": _finite(result.train_top1),
            f"{split}_top1": _finite(score["top1"]),
            f"{split}_loss": _finite(score["loss"]),
            **(
                {f"{split}_best_top1": _finite(result.best_top1), f"{split}_best_epoch": result.best_epoch}
                if result.evals
                else {}
            ),
        },
        "kept": _kept(recipe, split),
        "trainable_params": trainable_params,
        "head_params": head_params,
        "epochs_run": result.epochs_run,
        "skipped_batches": result.skipped_batches,
        "wall_seconds": round(wall, 3),  # runs trained together share their wall time equally
        "device": str(session.device),
        "precision": session.job.precision,
        "cached_features": pending.cached,
        "provenance": provenance.record(
            dependencies=session.job.of(point, pending.seed),
            data_manifest=session.spec.manifest,
            backbone_weights=run_settings.backbone.weights,
        ),
    }
    line = f"{run_settings.method} {dict(point.hp)} seed {pending.seed}: {split} top1 {score['top1']:.2f}"
    print(f"{line} ({metrics['status']})", flush=True)
    return pending.model, pending.trainable, metrics, logits, session.held_out["labels"]


def _kept(recipe: Recipe, split: str) -> str:
    """Which weights the run ended with and were scored: said plainly, since one option reads the test set."""
    if recipe.keep == "last":
        return "last epoch"
    if split == "test":
        return "best test epoch (a test-set oracle: the authors' CLIP model.pt, docs/protocol.md §C.5; not to report)"
    return f"best {split} epoch"


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def held_out_split(spec: TuneSpec | FinalSpec) -> str:
    """The split a job scores: a tune job's val, a final job's test (its spec's field of that name)."""
    return "val" if isinstance(spec, TuneSpec) else "test"


def tune(spec: TuneSpec, options: Options) -> None:
    """Every grid point of the spec, `concurrent` at a time, but those an earlier job already trained with the
    same dependencies (train.cache: a pack that gained or lost a point retrains nothing else). The
    job's file is rewritten (atomically) as each group is done, so a killed job shows what it finished (and
    Snakemake names it incomplete)."""
    job = JobDependencies(spec, options)
    folder = spec.run.resume_dir
    kept = TuneResults(folder, lambda point: job.of(point, spec.seed)) if folder else None
    results = {p.gp: kept.get(p) for p in spec.points} if kept else {}
    todo = [p for p in spec.points if not results.get(p.gp)]
    if len(todo) < len(spec.points):
        print(f"{len(spec.points) - len(todo)} of {len(spec.points)} grid points reused from {folder}", flush=True)

    def write() -> None:
        write_json(spec.metrics, {"points": [results[p.gp] for p in spec.points if results.get(p.gp)]}, "tune")

    if todo:
        session = Session(spec, options, len(todo), job)
        for i, (_, _, metrics, _, _) in _train(session, [(point, spec.seed) for point in todo], "tune", "val"):
            point = todo[i]
            if kept:
                kept.put(point, metrics)
            results[point.gp] = metrics
            write()
    else:  # every point reused: the job's file still lists them
        write()


def final(spec: FinalSpec, options: Options) -> None:
    """The selected grid point with the spec's seed: its metrics, test logits and trained tensors."""
    session = Session(spec, options, 1, JobDependencies(spec, options))
    for _, (model, trainable, metrics, logits, labels) in _train(session, [(spec.point, spec.seed)], "final", "test"):
        params = dict(model.named_parameters())
        save_safetensors(spec.peft, {n: params[n] for n in trainable}, {"method": spec.run.method, "gp": spec.point.gp})
        save_npz(spec.logits, logits=logits.numpy().astype(np.float32), labels=labels)
        write_json(spec.metrics, metrics, schema="metrics")


def load_trained(
    method: str, hp: Mapping[str, Any], backbone: Backbone, weights: str, num_classes: int, device: torch.device
) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A final run's model in eval mode, with its trained tensors before training and after (from `weights`)."""
    from safetensors.torch import load_file

    seed_everything(0)
    model, trainable, _, _ = build(method, hp, backbone, num_classes, Recipe(epochs=1, batch_size=1), device)
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in trainable}
    state = load_file(weights, device=str(device))
    if sorted(state) != sorted(trainable):
        raise ValueError(f"{weights}: holds {len(state)} tensors, not the {len(trainable)} that {method} trains")
    model.load_state_dict(state, strict=False)
    return model.eval(), before, {n: params[n].detach().clone() for n in trainable}
