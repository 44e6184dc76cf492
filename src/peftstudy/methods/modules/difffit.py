"""The layers and `inject` of difffit (torch); its settings are peftstudy.methods.difffit."""

from __future__ import annotations

import torch
from torch import nn

from peftstudy.methods import exact, layer_norm_names
from peftstudy.methods.difffit import Config


class Gain(nn.Module):
    """``gain * inner(x)``; `merge_factor` moves the gain from 1 (the backbone) to its trained value."""

    def __init__(self, inner: nn.Module, dim: int, device: torch.device) -> None:
        super().__init__()
        self.inner = inner
        self.gain = nn.Parameter(torch.ones(dim, device=device))
        self.merge_factor = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * (1 + self.merge_factor * (self.gain - 1))


def inject(model: nn.Module, cfg: Config) -> list[str]:
    biases = exact(model, lambda name: name.rsplit(".", 1)[-1] == "bias", "difffit")
    gains = []
    for i, block in enumerate(model.blocks):
        device = block.norm1.weight.device
        block.ls1 = Gain(block.ls1, model.embed_dim, device)
        block.ls2 = Gain(block.ls2, model.embed_dim, device)
        gains += [f"blocks.{i}.ls1.gain", f"blocks.{i}.ls2.gain"]
    norm_weights = [n for n in layer_norm_names(model) if n.endswith(".weight")]
    return [*biases, *norm_weights, *gains]
