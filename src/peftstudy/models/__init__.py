"""Backbones: timm's VisionTransformer, unforked; small variants registered like timm's own.

``peftstudy_vit_mini`` is the embedded study's backbone (ViT-B/16's class scaled down to 32x32 inputs);
``peftstudy_vit_test`` is a still smaller one for unit tests. Paper backbones are timm's own names, but for
``peftstudy_dinov2_vitb14_224``: timm's DINOv2 ViT-B/14 at the study's 224 x 224 input (16 x 16 tokens).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, _cfg, _create_vision_transformer

from peftstudy import gpus
from peftstudy.io import atomic_path, sha256_file
from peftstudy.plan.depends import verified_sha256

HEAD_NAMES = ("head.weight", "head.bias")

# Unnormalised [0, 1] input, as the paper's processed-VTAB runs (docs/protocol.md §B.2); the mini head is the
# 16-class `shapes` pretraining task.
default_cfgs = generate_default_cfgs(
    {
        "peftstudy_vit_mini": _cfg(num_classes=16, input_size=(3, 32, 32), mean=(0.0,) * 3, std=(1.0,) * 3),
        "peftstudy_vit_test": _cfg(num_classes=10, input_size=(3, 16, 16), mean=(0.0,) * 3, std=(1.0,) * 3),
        # ImageNet mean/std, as DINOv2 was trained with.
        "peftstudy_dinov2_vitb14_224": _cfg(input_size=(3, 224, 224)),
    }
)


@register_model
def peftstudy_vit_mini(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT for 32x32 inputs: patch 8 (4x4 tokens + CLS), width 128, depth 4, 4 heads; LN eps 1e-6 as ViT-B/16.

    Patch 8 rather than 4: 4x fewer tokens makes a CPU job ~2x faster (720 against 320 train img/s on one
    thread), which is what lets the whole mini study run in minutes.
    """
    args = dict(img_size=32, patch_size=8, embed_dim=128, depth=4, num_heads=4, mlp_ratio=4.0)
    return _create_vision_transformer("peftstudy_vit_mini", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def peftstudy_vit_test(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT for unit tests: 16x16 inputs, patch 4, width 32, depth 2, 2 heads."""
    args = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0)
    return _create_vision_transformer("peftstudy_vit_test", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def peftstudy_dinov2_vitb14_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """timm's ``vit_base_patch14_dinov2`` (LayerScale, 518 x 518 by default) at 224 x 224, as the authors run it
    (docs/protocol.md §E): the checkpoint's 37 x 37 position embedding is resampled to 16 x 16 by timm's checkpoint
    filter
    (bicubic, antialiased) when the weights are converted, and its mask token dropped."""
    args = dict(img_size=224, patch_size=14, embed_dim=768, depth=12, num_heads=12, init_values=1e-5)
    return _create_vision_transformer("peftstudy_dinov2_vitb14_224", pretrained=pretrained, **dict(args, **kwargs))


def check_fits(state: dict, expected: dict, what: str, arch: str, check: str) -> None:
    """Strict loading: every key of the architecture, no other, each of the same shape; else name them."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or reshaped:
        raise ValueError(
            f"{what} does not fit {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"other shapes {reshaped[:5]}; check {check}"
        )


def save_safetensors(path: str | Path, tensors: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
    """Tensors and metadata, the same bytes for the same content: safetensors writes a metadata mapping in a
    per-process random order, so the metadata goes in as one canonical JSON string (key "peftstudy")."""
    from safetensors.torch import save_file

    packed = {"peftstudy": json.dumps(metadata, sort_keys=True)} if metadata else None
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=packed)


# Set when a job was given GPUs: Slurm's counts and device lists, and CUDA's own list; the values each
# takes to say "none".
GPU_ALLOCATION = {
    "SLURM_GPUS": ("", "0"),
    "SLURM_GPUS_ON_NODE": ("", "0"),
    "SLURM_JOB_GPUS": ("",),
    "SLURM_STEP_GPUS": ("",),
    "CUDA_VISIBLE_DEVICES": ("", "-1", "NoDevFiles"),
}


def pick_device(name: str, threads: int | None = None, environ: MutableMapping[str, str] = os.environ) -> torch.device:
    """`auto` is CUDA when present, else the CPU; a job that asks for a GPU and finds none fails instead.

    Asking is `--device cuda` (the config's `device`), or `auto` in a job given GPUs (GPU_ALLOCATION): training
    such a job on the CPU would take days and look like a slow GPU. A stage that trains or predicts calls it first,
    with its --threads: torch's CPU threads are set here, not in the CLI, so that the CLI imports no torch (the
    report's env has none). Before CUDA starts, a job bound for it claims a GPU no other job of the machine holds
    (peftstudy.gpus: one GPU per job on a workstation), unless a scheduler chose its devices.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if name == "cuda" or (name == "auto" and torch.version.cuda):  # torch.version, unlike torch.cuda, starts no CUDA
        gpus.claim(environ)
    if torch.cuda.is_available():
        return torch.device("cuda" if name == "auto" else name)
    if name != "auto":
        if torch.device(name).type == "cuda":
            raise RuntimeError(
                f"device {name!r} asked for, but torch finds no CUDA device on {os.uname().nodename} "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda}): check the node's driver and the "
                "environment's torch, or set the config's `device` to auto or cpu"
            )
        return torch.device(name)
    given = [f"{var}={environ[var]}" for var, none in GPU_ALLOCATION.items() if environ.get(var, "") not in none]
    if given:
        raise RuntimeError(
            f"this job was given GPUs ({', '.join(given)}) but torch finds no CUDA device on {os.uname().nodename} "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}): check the node's driver and the "
            "environment's torch; to train on the CPU, run the job without a GPU allocation or with `device: cpu`"
        )
    return torch.device("cpu")


@functools.cache
def _read_weights(weights: str, sha256: str | None, device: str, mtime_ns: int, size: int) -> dict[str, torch.Tensor]:
    """A weights file, sha256-checked when a sum is given; read once per process (several runs share it).

    The tensors are only ever copied into models (`load_state_dict`), never trained in place.
    """
    from safetensors.torch import load_file

    if sha256 is not None:
        verified_sha256(weights, sha256, "backbone weights", "backbone.sha256")
    return load_file(weights, device=device)


def create_backbone(
    arch: str,
    num_classes: int,
    *,
    weights: str | Path | None = None,
    sha256: str | None = None,
    keep_head: bool = False,
    drop_path: float = 0.0,
    device: str | torch.device = "cpu",
) -> VisionTransformer:
    """Build `arch`, load `weights` strictly (sha256-checked when given), then give it a `num_classes` head.

    The head is a fresh PyTorch-default Linear (docs/protocol.md §A.1) unless `keep_head`, which keeps the
    pretrained head (the mini study's stand-in for CLIP's zero-shot head) and checks its size.
    `weights=None` leaves timm's random init (a from-scratch control).
    """
    state = None
    if weights is not None:
        stat = os.stat(weights)  # in the cache key, so a file replaced since it was read is read again
        state = _read_weights(str(weights), sha256, str(device), stat.st_mtime_ns, stat.st_size)
    # The pretrained head's size comes from the weights, so they load strictly; headless weights get none.
    head_classes = None
    if state is not None:
        head_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    with torch.device(device):
        model = timm.create_model(arch, pretrained=False, drop_path_rate=drop_path, num_classes=head_classes)
    if state is not None:
        check_fits(state, model.state_dict(), f"backbone weights {weights}", arch, "backbone.arch against the file")
        model.load_state_dict(state)
    if keep_head:
        if model.num_classes != num_classes:
            raise ValueError(
                f"keep_head: the pretrained head of {arch} has {model.num_classes} classes, the task {num_classes}"
            )
    else:
        model.reset_classifier(num_classes)
    return model


FORMATS = ("npz", "safetensors", "torch")


@torch.no_grad()
def convert(arch: str, path: str | Path, fmt: str) -> dict[str, torch.Tensor]:
    """A downloaded checkpoint as the state dict of timm's `arch` without its head, checked to be complete.

    npz: the original Google ViT files (timm's own JAX loader, as the authors use); torch: a `.pth`/`.bin`
    (read with weights_only=True, passed through timm's checkpoint filter for `arch`, which converts
    OpenAI/OpenCLIP/DINOv2 key layouts); safetensors: timm-format tensors. Every backbone tensor must come
    from the file: a missing or unexpected one is an error (the authors' strict=False hid such cases).
    """
    from timm.models import vision_transformer as vit

    model = timm.create_model(arch, pretrained=False, num_classes=0)
    expected = model.state_dict()
    if fmt == "npz":
        for p in model.parameters():
            p.fill_(float("nan"))  # whatever the loader does not write stays NaN, and is reported below
        try:
            vit._load_weights(model, str(path))
        except KeyError as err:
            raise ValueError(f"{path}: no {err} for {arch}; is it a checkpoint of that architecture?") from err
        unset = [n for n, p in model.named_parameters() if torch.isnan(p).any()]
        if unset:
            raise ValueError(f"{path}: no values for {unset[:5]} of {arch}; is it a checkpoint of that architecture?")
        return {k: v.clone() for k, v in model.state_dict().items()}
    if fmt == "torch":
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
        state = vit.checkpoint_filter_fn(state, model)
    elif fmt == "safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        raise ValueError(f"weights format {fmt!r}: use one of {', '.join(FORMATS)}")
    state = {k: v for k, v in state.items() if k not in HEAD_NAMES}
    check_fits(state, expected, str(path), arch, "backbone.arch and backbone.source.format")
    return state


def run_fetch(args) -> None:
    """`peftstudy fetch-backbone`: download (resumable, sha256-checked), convert, save as safetensors."""
    from peftstudy.data.fetch import download

    raw = Path(f"{args.out}.download")
    pinned = args.sha256 != "none"
    sha256 = download(
        args.url,
        raw,
        args.sha256 if pinned else None,
        allow_unpinned=args.allow_unpinned,
        config_key=args.config_key,
    )
    state = convert(args.arch, raw, args.format)
    # Whether the download's sum was pinned travels with the weights, into every result's provenance.
    about = {"arch": args.arch, "source": args.url, "format": args.format, "source_sha256": sha256, "pinned": pinned}
    save_safetensors(args.out, state, about)
    print(f"{args.out}: {len(state)} tensors of {args.arch}, sha256 {sha256_file(args.out)}", flush=True)
