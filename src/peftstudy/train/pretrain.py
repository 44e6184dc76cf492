"""Pretraining of the mini study's backbone from scratch on the generated pretraining set.

The whole model (head included: it is the mini study's "zero-shot" head) is saved as safetensors,
with the val accuracy and the settings in its metadata.
"""

from __future__ import annotations

import time

import torch

from peftstudy.io import load_npz, write_json
from peftstudy.models import create_backbone, pick_device, save_safetensors
from peftstudy.plan.specs import Options, PretrainSpec
from peftstudy.train.engine import Recipe, fit, predict, scores, seed_everything, to_input


def run(spec: PretrainSpec, options: Options) -> None:
    device = pick_device(spec.device, options.threads)
    seed_everything(spec.seed)
    train, val = load_npz(spec.train), load_npz(spec.val)
    classes = int(train["num_classes"])
    recipe = Recipe(**spec.recipe)
    # As floats whatever the config wrote (1 or 1.0): the settings go into the weights' metadata.
    lr, wd = float(spec.lr), float(spec.wd)
    model = create_backbone(spec.arch, classes, keep_head=False, device=device)
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    x, y = to_input(train["images"], mean, std, device, recipe), torch.from_numpy(train["labels"]).to(device)
    start = time.time()
    result = fit(model, x, y, lr=lr, wd=wd, recipe=recipe, seed=spec.seed)
    val_scores = scores(
        predict(model, to_input(val["images"], mean, std, device, recipe), 256), torch.from_numpy(val["labels"])
    )
    settings = {"arch": spec.arch, "lr": lr, "wd": wd, "seed": spec.seed, "recipe": dict(spec.recipe)}
    metadata = {"settings": settings, "val_top1": round(val_scores["top1"], 2)}
    save_safetensors(spec.weights, model.state_dict(), metadata)
    write_json(
        spec.metrics,
        {"val": val_scores, "train_loss": result.train_loss, "seconds": time.time() - start, **settings},
    )
    print(f"pretrained {spec.arch}: val top1 {val_scores['top1']:.2f}", flush=True)
