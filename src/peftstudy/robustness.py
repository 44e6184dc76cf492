"""Robustness: in- and out-of-distribution accuracy of the finals, and WiSE curves (STUDY.md G).

WiSE at mixing coefficient alpha (0 = the zero-shot model, 1 = the fine-tuned one), by the two
procedures of the study in one rule: every trained tensor that the zero-shot model also has (the head;
full's, BitFit's weights) is interpolated, ``(1 - alpha) * zero_shot + alpha * fine_tuned``; every
branch a method added is scaled by ``merge_factor = alpha``. So alpha = 0 is exactly the zero-shot model
for every method, and alpha = 1 exactly the fine-tuned one.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from peftstudy import methods
from peftstudy.io import load_npz, read_json, write_json
from peftstudy.train.engine import predict, scores, to_input
from peftstudy.train.runs import load_trained, pick_device


@torch.no_grad()
def wise(
    model: nn.Module,
    zero_shot: Mapping[str, torch.Tensor],
    fine_tuned: Mapping[str, torch.Tensor],
    added: set[str],
    alpha: float,
) -> nn.Module:
    """Set `model` to the WiSE mixture at `alpha`, in place, from its trained tensors at both end points.

    `added` are the tensors the method created: kept fine-tuned, their branch scaled by merge_factor.
    """
    params = dict(model.named_parameters())
    for name, end in fine_tuned.items():
        params[name].copy_(end if name in added else (1 - alpha) * zero_shot[name] + alpha * end)
    methods.set_merge_factor(model, alpha)
    return model


def check_mergeable(model: nn.Module, added: set[str], method: str) -> None:
    """WiSE needs every tensor a method added to sit in a branch with a merge_factor (prompts do not)."""
    outside = {
        name
        for name in added
        if not any(
            hasattr(model.get_submodule(".".join(name.split(".")[:i])), "merge_factor")
            for i in range(1, name.count(".") + 1)
        )
    }
    if outside:
        raise ValueError(
            f"WiSE is not defined for {method}: {sorted(outside)[:3]} cannot be scaled towards the zero-shot model; "
            "leave the method out of the robustness experiment"
        )


def added_names(arch: str, trainable: list[str]) -> set[str]:
    """Trained tensors the backbone itself does not have: the method's own (built on the meta device)."""
    from peftstudy.models import create_backbone

    backbone = {n for n, _ in create_backbone(arch, 2, device="meta").named_parameters()}
    return set(trainable) - backbone


def evaluate(model: nn.Module, sets: Mapping[str, tuple[torch.Tensor, torch.Tensor]], batch: int) -> dict[str, float]:
    return {name: scores(predict(model, x, batch), y)["top1"] for name, (x, y) in sets.items()}


def run(args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    named = [item.split("=", 1) for item in args.eval]
    id_name, ood_names = named[0][0], [n for n, _ in named[1:]]
    raw = {name: load_npz(path) for name, path in named}
    classes = int(raw[id_name]["num_classes"])
    per_seed_ood, curves = [], []
    record = read_json(args.final, schema="final")
    for final_dir in (r["dir"] for r in record["runs"]):
        meta = read_json(f"{final_dir}/metrics.json", schema="metrics")
        model, zero_shot, fine_tuned = load_trained(
            args.method, meta["hp"], args.backbone, f"{final_dir}/peft.safetensors", classes, device
        )
        mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
        sets = {n: (to_input(d["images"], mean, std, device), torch.from_numpy(d["labels"])) for n, d in raw.items()}
        added = added_names(args.backbone["arch"], list(fine_tuned))
        check_mergeable(model, added, args.method)
        per_seed_ood.append({"seed": meta["seed"], **evaluate(model, sets, 256)})
        for alpha in args.alphas:
            acc = evaluate(wise(model, zero_shot, fine_tuned, added, alpha), sets, 256)
            curves.append({"seed": meta["seed"], "alpha": alpha, **acc})

    def summarise(rows: list[dict]) -> dict:
        out = {name: float(np.mean([r[name] for r in rows])) for name in [id_name, *ood_names]}
        return {
            "id": out[id_name],
            "ood": {n: out[n] for n in ood_names},
            "ood_mean": float(np.mean([out[n] for n in ood_names])),
        }

    write_json(
        args.out_ood,
        {
            "method": args.method,
            "id_set": id_name,
            "ood_sets": ood_names,
            "seeds": [r["seed"] for r in per_seed_ood],
            **summarise(per_seed_ood),
            "per_seed": per_seed_ood,
        },
        schema="ood",
    )
    points = [{"alpha": a, **summarise([c for c in curves if c["alpha"] == a])} for a in args.alphas]
    write_json(
        args.out_wise,
        {
            "method": args.method,
            "id_set": id_name,
            "ood_sets": ood_names,
            "alphas": list(args.alphas),
            "points": points,
            "procedure": "interpolate tensors the zero-shot model has; scale added branches by merge_factor",
        },
        schema="wise",
    )
