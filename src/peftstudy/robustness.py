"""Robustness: in- and out-of-distribution accuracy of the finals, and WiSE curves (docs/protocol.md §G).

WiSE at mixing coefficient alpha (0 = the zero-shot model, 1 = the fine-tuned one), by the study's two
procedures in one rule: every trained tensor that the zero-shot model also has (the head; full's,
BitFit's, LayerNorm's weights) is interpolated, ``(1 - alpha) * zero_shot + alpha * fine_tuned`` (the
state-dict interpolation of ``merge_model.py``: untrained tensors are equal at both ends); every branch a
method added is scaled by ``merge_factor = alpha`` (``merge_petl.py``). So alpha = 0 is exactly the
zero-shot model for every method, and alpha = 1 exactly the fine-tuned one. The head-only variant
(``merge_fc``) interpolates the head alone and keeps everything else fine-tuned.

Test sets whose images cover part of the label space (ImageNet-R and -A: 200 of 1000 classes) are scored
on the logits of those classes only, as the authors' masks do (docs/protocol.md §D.3).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from peftstudy import methods
from peftstudy.io import load_npz, read_json, write_json
from peftstudy.models import pick_device
from peftstudy.plan import specs, stage_specs
from peftstudy.tables import subset_classes
from peftstudy.train.engine import features, to_input
from peftstudy.train.runs import load_trained


@torch.no_grad()
def wise(
    model: nn.Module,
    zero_shot: Mapping[str, torch.Tensor],
    fine_tuned: Mapping[str, torch.Tensor],
    added: set[str],
    alpha: float,
    only: Collection[str] | None = None,
) -> nn.Module:
    """Set `model` to the WiSE mixture at `alpha`, in place, from its trained tensors at both end points.

    `added` are the tensors the method created: kept fine-tuned, their branch scaled by merge_factor. With
    `only` (the head-only variant), just those tensors are interpolated; the rest stay fine-tuned at full
    strength.
    """
    params = dict(model.named_parameters())
    for name, end in fine_tuned.items():
        mixed = only is None or name in only
        params[name].copy_(end if name in added or not mixed else (1 - alpha) * zero_shot[name] + alpha * end)
    methods.set_merge_factor(model, alpha if only is None else 1.0)
    return model


def procedure(trained: Collection[str], added: Collection[str], head: Collection[str]) -> str:
    """Which of the study's WiSE procedures a method's trained tensors call for (recorded in wise.json)."""
    edited = set(trained) - set(added) - set(head)
    if added and edited:
        return "edited tensors and head interpolated; added branches scaled by merge_factor"
    if added:
        return "head interpolated; added branches scaled by merge_factor (merge_petl)"
    return "state-dict interpolation (merge_model)"


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


def class_subset(labels: np.ndarray, subset: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(images kept, logit columns scored) for a test set covering `subset` of the classes (None: all).

    Images of other classes are dropped (ImageNet-R and -A have none; a mini study's shifted set may).
    """
    if subset is None:
        return np.arange(len(labels)), np.array([], dtype=np.int64)
    columns = np.asarray(sorted(set(subset)), dtype=np.int64)
    return np.flatnonzero(np.isin(labels, columns)), columns


def top1(logits: torch.Tensor, labels: torch.Tensor, columns: np.ndarray) -> float:
    """Top-1 (%) with the argmax taken over `columns` only when given (the 200-class masks), as 1000-way classes."""
    if not len(columns):
        return 100.0 * (logits.argmax(1) == labels).float().mean().item()
    predictions = np.asarray(columns)[logits.numpy()[:, columns].argmax(axis=1)]
    return 100.0 * float((predictions == labels.numpy()).mean())


TestSet = tuple[object, torch.Tensor, np.ndarray]  # (model inputs, labels, logit columns)


def head_logits(model: nn.Module, pre_logits: torch.Tensor, batch: int) -> torch.Tensor:
    """`predict`'s logits from the model's pre-logits (`features`): its head on the same inputs in the same
    batches, so the same numbers, bit for bit (tests/test_analysis.py holds every method to it)."""
    head = model.get_classifier()
    with torch.no_grad():
        return torch.cat([head(pre_logits[i : i + batch]).float() for i in range(0, len(pre_logits), batch)]).cpu()


def state_digests(model: nn.Module, head: Collection[str]) -> tuple[bytes, bytes]:
    """Digests of what WiSE changes in `model`, in one pass over its parameters: (the backbone's: every parameter
    but the `head`'s, and every branch's merge_factor; the whole model's).

    Equal digests mean the same model, so the same accuracies: a curve's points often are the fine-tuned model
    (alpha = 1 of both variants) or each other (the linear probe trains only the head, so its two variants
    coincide), and each such point is evaluated once. Equal backbone digests mean the same pre-logits.
    """

    def add(digest: hashlib.blake2b, params: list[tuple[str, torch.Tensor]]) -> None:
        for name, param in params:
            digest.update(name.encode())
            digest.update(param.detach().reshape(-1).view(torch.uint8).cpu().numpy())

    named = list(model.named_parameters())
    backbone = hashlib.blake2b(digest_size=20)
    add(backbone, [(name, param) for name, param in named if name not in head])
    factors = [(name, module.merge_factor) for name, module in model.named_modules() if hasattr(module, "merge_factor")]
    backbone.update(repr(factors).encode())
    whole = backbone.copy()
    add(whole, [(name, param) for name, param in named if name in head])
    return backbone.digest(), whole.digest()


class Evaluations:
    """A model's top-1 on each test set, computed once per distinct model state (:func:`state_digests`) in a
    process; and its backbone run once per distinct backbone state: a point that differs from the last one
    computed in its head alone (the head-only variant's points, all of the linear probe's) costs the head's
    matrix product, not a forward pass. Only the last backbone state's pre-logits are kept (one set of features
    in memory, however large the test sets)."""

    def __init__(self, sets: Mapping[str, TestSet], batch: int) -> None:
        self.sets, self.batch = sets, batch
        self.done: dict[bytes, dict[str, float]] = {}
        self._pre_logits: tuple[bytes, dict[str, torch.Tensor]] = (b"", {})

    def __call__(self, model: nn.Module) -> dict[str, float]:
        backbone, key = state_digests(model, set(methods.head_names(model)))
        if key not in self.done:
            if self._pre_logits[0] != backbone:
                self._pre_logits = (
                    backbone,
                    {name: features(model, x, self.batch) for name, (x, _, _) in self.sets.items()},
                )
            pre_logits = self._pre_logits[1]
            self.done[key] = {
                name: top1(head_logits(model, pre_logits[name], self.batch), y, cols)
                for name, (_, y, cols) in self.sets.items()
            }
        return dict(self.done[key])


def _test_sets(raw: Mapping[str, dict], subsets: Mapping[str, Sequence[int] | None], model: nn.Module, device) -> dict:
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    sets = {}
    for name, d in raw.items():
        keep, columns = class_subset(d["labels"], subsets.get(name))
        if len(keep) == 0:
            raise ValueError(f"{name}: none of its test images is of the classes of its class subset")
        if len(keep) < len(d["labels"]):
            print(f"{name}: {len(keep)} of {len(d['labels'])} images are of its {len(columns)} classes", flush=True)
        sets[name] = (to_input(d["images"][keep], mean, std, device), torch.from_numpy(d["labels"][keep]), columns)
    return sets


def _classes(spec: Sequence[int] | str) -> list[int]:
    """A class subset from the config: class indices, or the name of a set whose mask is known (imagenet_r)."""
    if isinstance(spec, str):
        classes = subset_classes(spec)
        if classes is None:
            raise ValueError(f"class_subset {spec!r}: no known class list by that name; use imagenet_r or imagenet_a")
        return classes
    return list(spec)


def _summarise(rows: list[dict], id_name: str, ood_names: list[str]) -> dict:
    out = {name: float(np.mean([r[name] for r in rows])) for name in [id_name, *ood_names]}
    ood = {n: out[n] for n in ood_names}
    return {"id": out[id_name], "ood": ood, "ood_mean": float(np.mean(list(ood.values())))}


def run(spec: stage_specs.RobustnessSpec, options: specs.Options) -> None:
    from peftstudy.models import create_backbone

    device = pick_device(spec.device, options.threads)
    id_name, ood_names = spec.in_distribution.name, [test_set.name for test_set in spec.shifted]
    record = read_json(spec.final, schema="final")
    if record.get("status") == "all-diverged":  # nothing to evaluate: recorded so, for the tables to say why
        common = {"method": spec.method, "id_set": id_name, "ood_sets": ood_names, "status": "all-diverged"}
        subsets = sorted(spec.class_subsets)
        write_json(spec.ood, {**common, "seeds": [], "class_subsets": subsets, "per_seed": []}, schema="ood")
        reason = "every grid point diverged: no final to interpolate"
        write_json(spec.wise, {**common, "alphas": list(spec.alphas), "points": [], "procedure": reason}, "wise")
        return
    raw = {test_set.name: load_npz(test_set.test) for test_set in (spec.in_distribution, *spec.shifted)}
    subsets = {name: _classes(subset) for name, subset in spec.class_subsets.items()}
    classes = int(raw[id_name]["num_classes"])
    per_seed_ood, curves = [], []
    not_mergeable = ""
    backbone = spec.backbone
    backbone_names = {n for n, _ in create_backbone(backbone.arch, classes, device="meta").named_parameters()}
    evaluations = None
    weights = [path for _, _, path in stage_specs.final_runs([record], "peft", spec.peft, spec.stage)]
    metrics = [path for _, _, path in stage_specs.final_runs([record], "metrics", spec.metrics, spec.stage)]
    for metrics_file, weights_file in zip(metrics, weights, strict=True):  # the record's runs, in its order
        meta = read_json(metrics_file, schema="metrics")
        model, zero_shot, fine_tuned = load_trained(spec.method, meta["hp"], backbone, weights_file, classes, device)
        evaluations = evaluations or Evaluations(_test_sets(raw, subsets, model, device), 256)
        head = set(methods.head_names(model))
        # The head is always interpolated, whatever the backbone's head looked like before (CLIP's adds proj).
        added = set(fine_tuned) - backbone_names - head
        per_seed_ood.append({"seed": meta["seed"], **evaluations(model)})
        try:
            check_mergeable(model, added, spec.method)
        except ValueError as err:  # VPT: OOD accuracy still counts; its WiSE curve says why it has none
            not_mergeable = str(err)
            print(not_mergeable, flush=True)
            continue
        # The head-only variant first: its points share the backbone of the fine-tuned model just evaluated.
        for variant, only in (("head_only", head), ("wise", None)):
            for alpha in spec.alphas:
                acc = evaluations(wise(model, zero_shot, fine_tuned, added, alpha, only))
                curves.append({"seed": meta["seed"], "variant": variant, "alpha": alpha, **acc})
                print(f"{spec.method} seed {meta['seed']} {variant} alpha {alpha:.2f}: {acc}", flush=True)
    common = {"method": spec.method, "id_set": id_name, "ood_sets": ood_names}
    names = (id_name, ood_names)
    ood = {**common, "seeds": [r["seed"] for r in per_seed_ood], **_summarise(per_seed_ood, *names)}
    write_json(spec.ood, {**ood, "class_subsets": sorted(subsets), "per_seed": per_seed_ood}, schema="ood")
    points = [
        {"variant": v, "alpha": a, **_summarise([c for c in curves if c["variant"] == v and c["alpha"] == a], *names)}
        for v in ("wise", "head_only")
        for a in spec.alphas
        if not not_mergeable
    ]
    write_json(
        spec.wise,
        {
            **common,
            "alphas": list(spec.alphas),
            "points": points,
            "procedure": not_mergeable or procedure(fine_tuned, added, head),
        },
        schema="wise",
    )
