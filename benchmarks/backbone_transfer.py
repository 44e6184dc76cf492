"""Does the committed mini backbone transfer? Frozen-feature methods on it against a random init.

For every dataset of the mini study's `vtab` experiment and each of linear probing and BitFit, trains
on the train split and scores on val, with the committed weights and with timm's random init, at each
of the experiment's common-grid learning rates (best one kept, as selection would). Reads the prepared
caches of a mini run (`snakemake all` first). Last line: `min_margin=<points>` (pretrained minus random,
smallest over tasks and methods; positive = the backbone helps everywhere).

    python benchmarks/backbone_transfer.py [--config config.yaml]
"""

from __future__ import annotations

import argparse

import torch
import yaml

from peftstudy import methods
from peftstudy.io import load_npz
from peftstudy.models import create_backbone
from peftstudy.train.engine import Recipe, fit, predict, scores, seed_everything, to_input


def val_top1(arch, weights, sha256, method, train, val, lr, wd, recipe, seed=0):
    seed_everything(seed)
    model = create_backbone(arch, int(train["num_classes"]), weights=weights, sha256=sha256, drop_path=recipe.drop_path)
    methods.apply(model, method, methods.get(method).config())
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    fit(
        model,
        to_input(train["images"], mean, std, "cpu"),
        torch.from_numpy(train["labels"]),
        lr=lr,
        wd=wd,
        recipe=recipe,
        seed=seed,
        log_every=0,
    )
    logits = predict(model, to_input(val["images"], mean, std, "cpu"), 256)
    return scores(logits, torch.from_numpy(val["labels"]))["top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yaml")
    args = parser.parse_args()
    with open(args.config) as handle:
        config = yaml.safe_load(handle)
    torch.set_num_threads(config["threads"])
    exp, backbone = config["experiments"]["vtab"], config["backbone"]
    recipe = Recipe(**exp["recipe"])
    root = f"results/{config['study']}/data"
    margins = []
    print(f"{'dataset':12s} {'method':8s} {'pretrained':>10s} {'random':>8s} {'margin':>7s}")
    for dataset in exp["datasets"]:
        train, val = load_npz(f"{root}/{dataset}/train.npz"), load_npz(f"{root}/{dataset}/val.npz")
        for method in ("linear", "bitfit"):
            best = {}
            for label, weights, sha in (
                ("pretrained", backbone["weights"], backbone["sha256"]),
                ("random", None, None),
            ):
                best[label] = max(
                    val_top1(backbone["arch"], weights, sha, method, train, val, lr, exp["grid"]["wd"][0], recipe)
                    for lr in exp["grid"]["lr"]
                )
            margins.append(best["pretrained"] - best["random"])
            print(
                f"{dataset:12s} {method:8s} {best['pretrained']:10.1f} {best['random']:8.1f} {margins[-1]:+7.1f}",
                flush=True,
            )
    print(f"min_margin={min(margins):.1f}")


if __name__ == "__main__":
    main()
