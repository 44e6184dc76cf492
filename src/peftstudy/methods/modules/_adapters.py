"""The bottleneck adapters' layers (torch); their settings in peftstudy.methods._adapters.

``Adapter(z) = merge_factor * s * Up(Dropout(ReLU(Down(z))))``, D -> r -> D, with the init each method states.
"""

from __future__ import annotations

import torch
from torch import nn

from peftstudy.methods._adapters import INITS


class Adapter(nn.Module):
    def __init__(self, dim: int, r: int, scale: float, dropout: float, init: str, device: torch.device) -> None:
        super().__init__()
        self.down = nn.Linear(dim, r, device=device)
        self.up = nn.Linear(r, dim, device=device)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        self.merge_factor = 1.0
        if init == "houlsby":  # random init: xavier weights, near-zero biases
            for layer in (self.down, self.up):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.normal_(layer.bias, std=1e-6)
        elif init == "lora":  # the branch starts at zero: xavier down, zero up
            nn.init.xavier_uniform_(self.down.weight)
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        elif init == "kaiming":  # AdaptFormer: PyTorch's Linear default for down, zero up
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        else:
            raise ValueError(f"adapter init {init!r}; use one of {', '.join(INITS)}")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.merge_factor * self.scale * self.up(self.dropout(torch.relu(self.down(z))))


class SequentialAfter(nn.Module):
    """Replaces a block's LayerScale `ls`, so the branch ends in an adapter (`z' = z + Adapter(z)`).

    `variant="authors"`: z = DP(LS(branch)) and the block then applies DP and LS again to z' (docs/protocol.md §I.3).
    `variant="original"`: z = LS(branch), the block's own DP and residual follow once.
    """

    def __init__(self, ls: nn.Module, drop_path: nn.Module, adapter: Adapter, variant: str) -> None:
        super().__init__()
        self.ls, self.adapter, self.variant = ls, adapter, variant
        self.drop_path = drop_path if variant == "authors" else nn.Identity()

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        z = self.drop_path(self.ls(branch))
        z = z + self.adapter(z)
        return self.ls(z) if self.variant == "authors" else z


def sequential(
    model: nn.Module, where: tuple[int, ...], r: int, scale: float, dropout: float, init: str, variant: str
) -> list[str]:
    """Adapters after the attention (1) and/or MLP (2) branch of every block; returns their tensors' names."""
    trainable = []
    for i, block in enumerate(model.blocks):
        device = block.norm1.weight.device
        for k in where:
            adapter = Adapter(model.embed_dim, r, scale, dropout, init, device)
            setattr(
                block,
                f"ls{k}",
                SequentialAfter(getattr(block, f"ls{k}"), getattr(block, f"drop_path{k}"), adapter, variant),
            )
            trainable += [f"blocks.{i}.ls{k}.adapter.{n}" for n, _ in adapter.named_parameters()]
    return trainable


class Parallel(nn.Module):
    """Replaces a block's drop-path: ``DP(y) + DP(LS(branch(source)))``, the branch with its own drop-path mask.

    `source` is handed over by a hook on the block's LayerNorm just before this module runs (AdaptFormer reads
    the LN's input, ConvPass its output), so no backbone module is renamed.
    """

    def __init__(self, drop_path: nn.Module, ls: nn.Module, branch: nn.Module) -> None:
        super().__init__()
        self.drop_path, self.ls, self.branch = drop_path, ls, branch
        self.source: torch.Tensor | None = None

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        source, self.source = self.source, None
        return self.drop_path(y) + self.drop_path(self.ls(self.branch(source)))
