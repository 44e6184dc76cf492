"""Prompt tokens shared by VPT-shallow and VPT-deep (docs/protocol.md §A.2 #7, #8).

Prompts are prepended in front of the CLS token and stripped again, through forward hooks, so the
blocks keep their own parameter names. Init U(-v, v), v = sqrt(6 / (3 * p^2 + D)) with p the patch size
(VPT's rule); dropout on the prompts. Prompts cannot be scaled towards "no prompt", so they take no
`merge_factor`: WiSE is not defined for VPT (the paper has no VPT WiSE results either).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Prompts(nn.Module):
    def __init__(self, count: int, dim: int, patch_size: int, dropout: float, device: torch.device) -> None:
        super().__init__()
        bound = math.sqrt(6.0 / (3 * patch_size**2 + dim))
        self.tokens = nn.Parameter(torch.empty(count, dim, device=device).uniform_(-bound, bound))
        self.dropout = nn.Dropout(dropout)

    def prepend(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.dropout(self.tokens).expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)


def attach(model: nn.Module, first: int, last: int, count: int, dropout: float) -> str:
    """Prompts prepended at the input of block `first` and stripped after block `last`; returns their name."""
    block = model.blocks[first]
    device = block.norm1.weight.device
    block.prompts = Prompts(count, model.embed_dim, model.patch_embed.patch_size[0], dropout, device)
    block.register_forward_pre_hook(lambda mod, args: (mod.prompts.prepend(args[0]), *args[1:]))
    model.blocks[last].register_forward_hook(lambda mod, args, out: out[:, count:])
    return f"blocks.{first}.prompts.tokens"
