"""The layers and `inject` of ssf (torch); its settings are peftstudy.methods.ssf."""

from __future__ import annotations

import torch
from torch import nn

from peftstudy.methods.ssf import Config

# Modules after whose output SSF sits, relative to a block; the model-level ones are added in inject().
BLOCK_TARGETS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


class ScaleShift(nn.Module):
    def __init__(self, dim: int, device: torch.device) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.empty(dim, device=device).normal_(1.0, 0.02))
        self.shift = nn.Parameter(torch.empty(dim, device=device).normal_(0.0, 0.02))
        self.merge_factor = 1.0

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * (1 + self.merge_factor * (self.scale - 1)) + self.merge_factor * self.shift


def _attach(model: nn.Module, path: str, dim: int) -> list[str]:
    """Put a ScaleShift on the output of module `path`, as its child `ssf` (the module keeps its names)."""
    module = model.get_submodule(path)
    device = next(model.parameters()).device
    module.ssf = ScaleShift(dim, device)
    module.register_forward_hook(lambda mod, args, out: mod.ssf(out))
    return [f"{path}.ssf.scale", f"{path}.ssf.shift"]


def _width(module: nn.Module, fallback: int) -> int:
    return getattr(module, "out_features", None) or getattr(module, "normalized_shape", (fallback,))[0]


def inject(model: nn.Module, cfg: Config) -> list[str]:
    dim = model.embed_dim
    trainable = _attach(model, "patch_embed", dim)
    for i, block in enumerate(model.blocks):
        for target in BLOCK_TARGETS:
            trainable += _attach(model, f"blocks.{i}.{target}", _width(block.get_submodule(target), dim))
    return trainable + _attach(model, "norm", dim)
