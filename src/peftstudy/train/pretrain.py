"""Pretraining of the mini study's backbone from scratch on the generated pretraining set.

The whole model (head included: it is the mini study's "zero-shot" head) is saved as safetensors,
with the val accuracy and the settings in its metadata.
"""

from __future__ import annotations

import argparse
import time

import torch

from peftstudy.io import load_npz, write_json
from peftstudy.models import create_backbone, pick_device, save_safetensors
from peftstudy.train.engine import Recipe, fit, predict, scores, seed_everything, to_input


def run(args: argparse.Namespace) -> None:
    device = pick_device(args.device, args.threads)
    seed_everything(args.seed)
    train, val = load_npz(args.train), load_npz(args.val)
    classes = int(train["num_classes"])
    recipe = Recipe(**args.recipe)
    model = create_backbone(args.arch, classes, keep_head=False, device=device)
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    x, y = to_input(train["images"], mean, std, device, recipe), torch.from_numpy(train["labels"]).to(device)
    start = time.time()
    result = fit(model, x, y, lr=args.lr, wd=args.wd, recipe=recipe, seed=args.seed)
    val_scores = scores(
        predict(model, to_input(val["images"], mean, std, device, recipe), 256), torch.from_numpy(val["labels"])
    )
    settings = {"arch": args.arch, "lr": args.lr, "wd": args.wd, "seed": args.seed, "recipe": args.recipe}
    metadata = {"settings": settings, "val_top1": round(val_scores["top1"], 2)}
    save_safetensors(args.out, model.state_dict(), metadata)
    write_json(
        args.metrics,
        {"val": val_scores, "train_loss": result.train_loss, "seconds": time.time() - start, **settings},
    )
    print(f"pretrained {args.arch}: val top1 {val_scores['top1']:.2f}", flush=True)
