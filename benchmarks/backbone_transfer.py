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


def margins(config: dict, data_root: str) -> list[dict]:
    """Per (dataset, method): best val top-1 over the common lr grid, pretrained and random-init."""
    exp, backbone = config["experiments"]["vtab"], config["backbone"]
    recipe = Recipe(**exp["recipe"])
    rows = []
    for dataset in exp["datasets"]:
        train, val = load_npz(f"{data_root}/{dataset}/train.npz"), load_npz(f"{data_root}/{dataset}/val.npz")
        for method in ("linear", "bitfit"):
            best = {}
            candidates = (("pretrained", backbone["weights"], backbone["sha256"]), ("random", None, None))
            for label, weights, sha in candidates:
                best[label] = max(
                    val_top1(backbone["arch"], weights, sha, method, train, val, lr, exp["grid"]["wd"][0], recipe)
                    for lr in exp["grid"]["lr"]
                )
            rows.append({"dataset": dataset, "method": method, **best, "margin": best["pretrained"] - best["random"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yaml")
    args = parser.parse_args()
    with open(args.config) as handle:
        config = yaml.safe_load(handle)
    torch.set_num_threads(config["threads"])
    print(f"{'dataset':12s} {'method':8s} {'pretrained':>10s} {'random':>8s} {'margin':>7s}")
    rows = margins(config, f"results/{config['study']}/data")
    for r in rows:
        print(f"{r['dataset']:12s} {r['method']:8s} {r['pretrained']:10.1f} {r['random']:8.1f} {r['margin']:+7.1f}")
    print(f"min_margin={min(r['margin'] for r in rows):.1f}")


if __name__ == "__main__":
    main()
