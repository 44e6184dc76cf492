"""Tune and final runs: one grid point of one method on one dataset.

A tune run sees train and val caches only; a final run sees train+val and test, and evaluates test
once, after the last epoch. Both write a schema-checked metrics.json; a final also writes the test
logits and the trained (PEFT-only) tensors.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from peftstudy import methods, provenance
from peftstudy.config import config_hash
from peftstudy.io import load_npz, save_npz, save_safetensors, sha256_file, write_json
from peftstudy.models import create_backbone
from peftstudy.train.engine import Recipe, fit, predict, scores, seed_everything, to_input


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU (a GPU request on a machine without one still runs)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build(
    method: str, hp: dict[str, Any], backbone: dict[str, Any], num_classes: int, recipe: Recipe, device: torch.device
) -> tuple[nn.Module, list[str], dict[str, Any], Any]:
    """Backbone with its weights, the method injected, everything but the method's tensors and the head frozen."""
    recipe_hp, cfg = methods.split_hp(method, hp)
    model = create_backbone(
        backbone["arch"],
        num_classes,
        weights=backbone.get("weights"),
        sha256=backbone.get("sha256"),
        keep_head=backbone.get("keep_head", False),
        drop_path=recipe_hp.get("drop_path", recipe.drop_path),
        device=device,
    )
    trainable = methods.apply(model, method, cfg, linear_init=recipe.peft_init)
    return model, trainable, recipe_hp, cfg


def count(model: nn.Module, names: list[str]) -> tuple[int, int]:
    """(trainable parameters outside the head, head parameters)."""
    params = dict(model.named_parameters())
    head = set(methods.head_names(model))
    return sum(params[n].numel() for n in names if n not in head), sum(params[n].numel() for n in head)


def _run(args: argparse.Namespace, phase: str, held_out: str, split: str):
    """Train on args.train, then score the held-out split once: (model, trainable names, metrics, logits, labels)."""
    device = pick_device(args.device)
    recipe = Recipe(**args.recipe)
    train = load_npz(args.train)
    seed_everything(args.seed)
    model, trainable, recipe_hp, cfg = build(
        args.method, args.hp, args.backbone, int(train["num_classes"]), recipe, device
    )
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    x, y = to_input(train["images"], mean, std, device), torch.from_numpy(train["labels"]).to(device)
    start = time.time()
    result = fit(model, x, y, lr=recipe_hp["lr"], wd=recipe_hp["wd"], recipe=recipe, seed=args.seed)
    # The held-out split is read only now, after training, and evaluated exactly once.
    data = load_npz(held_out)
    logits = predict(model, to_input(data["images"], mean, std, device), recipe.eval_batch_size)
    score = scores(logits, torch.from_numpy(data["labels"]))
    trainable_params, head_params = count(model, trainable)
    diverged = result.diverged or not np.isfinite(score["loss"])
    metrics = {
        "status": "diverged" if diverged else "ok",
        "phase": phase,
        "experiment": args.experiment,
        "dataset": args.dataset,
        "method": args.method,
        "gp": args.gp,
        "hp": args.hp,
        "method_config": dataclasses.asdict(cfg),
        "recipe": dataclasses.asdict(recipe),
        "seed": args.seed,
        "metrics": {
            "train_loss": _finite(result.train_loss),
            "train_top1": _finite(result.train_top1),
            f"{split}_top1": _finite(score["top1"]),
            f"{split}_loss": _finite(score["loss"]),
        },
        "trainable_params": trainable_params,
        "head_params": head_params,
        "epochs_run": result.epochs_run,
        "skipped_batches": result.skipped_batches,
        "wall_seconds": round(time.time() - start, 3),
        "device": str(device),
        "precision": "fp32",
        "provenance": provenance.record(
            # The hash of the settings this run depends on, not of the whole study config: an unrelated edit
            # elsewhere in the config must not make a result look different (or rerun it).
            config_hash=config_hash({k: vars(args)[k] for k in ("method", "hp", "recipe", "backbone", "seed")}),
            data_manifest=args.manifest,
            backbone_sha256=_backbone_sha256(args.backbone),
        ),
    }
    print(f"{args.method} {args.hp} seed {args.seed}: {split} top1 {score['top1']:.2f} ({metrics['status']})")
    return model, trainable, metrics, logits, data["labels"]


def _backbone_sha256(backbone: dict[str, Any]) -> str | None:
    """The weights' sha256: the config's, which create_backbone has just verified, else hashed here."""
    if not backbone.get("weights"):
        return None
    return backbone.get("sha256") or sha256_file(backbone["weights"])


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def tune(args: argparse.Namespace) -> None:
    _, _, metrics, _, _ = _run(args, "tune", args.val, "val")
    write_json(args.out, metrics, schema="metrics")


def final(args: argparse.Namespace) -> None:
    model, trainable, metrics, logits, labels = _run(args, "final", args.test, "test")
    params = dict(model.named_parameters())
    save_safetensors(args.out_weights, {n: params[n] for n in trainable}, {"method": args.method, "gp": args.gp})
    save_npz(args.out_logits, logits=logits.numpy().astype(np.float32), labels=labels)
    write_json(args.out_metrics, metrics, schema="metrics")


def load_trained(
    method: str, hp: dict[str, Any], backbone: dict[str, Any], weights: str, num_classes: int, device: torch.device
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
