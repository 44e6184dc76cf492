"""AdaptFormer (STUDY.md A.2 #12, I.4): a bottleneck adapter parallel to the MLP, fed the residual stream
before LN2: ``x = x + DP(LS2(mlp(LN2(x)))) + DP(LS2(s * Up(Dropout(ReLU(Down(x))))))``, with its own
drop-path mask. Down: PyTorch's Linear init; Up and biases zero, so the model starts as the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from peftstudy.methods import register
from peftstudy.methods._adapters import Adapter


@dataclass(frozen=True)
class Config:
    r: int = field(default=64, metadata={"help": "bottleneck width"})
    scale: float = field(default=0.1, metadata={"help": "s, the adapter output's multiplier"})
    dropout: float = field(default=0.1, metadata={"help": "dropout inside the adapter"})

    def __post_init__(self) -> None:
        if not (isinstance(self.r, int) and self.r >= 1):
            raise ValueError(f"adaptformer: r must be a positive integer, got {self.r!r}")


class ParallelDropPath(nn.Module):
    """Replaces the block's second drop-path: ``DP(y) + DP(LS2(adapter(x)))``, x the input of LN2."""

    def __init__(self, drop_path: nn.Module, ls: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.drop_path, self.ls, self.adapter = drop_path, ls, adapter
        self.residual: torch.Tensor | None = None

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        residual, self.residual = self.residual, None
        return self.drop_path(y) + self.drop_path(self.ls(self.adapter(residual)))


def inject(model: nn.Module, cfg: Config) -> list[str]:
    trainable = []
    for i, block in enumerate(model.blocks):
        adapter = Adapter(model.embed_dim, cfg.r, cfg.scale, cfg.dropout, "kaiming", block.norm1.weight.device)
        parallel = ParallelDropPath(block.drop_path2, block.ls2, adapter)
        block.drop_path2 = parallel
        # LN2's input is the residual stream the adapter reads; a pre-hook hands it over without renaming LN2.
        block.norm2.register_forward_pre_hook(
            lambda mod, args, parallel=parallel: setattr(parallel, "residual", args[0])
        )
        trainable += [f"blocks.{i}.drop_path2.adapter.{n}" for n, _ in adapter.named_parameters()]
    return trainable


register("adaptformer", Config, inject)
