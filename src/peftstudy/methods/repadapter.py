"""RepAdapter (STUDY.md A.2 #14): a linear adapter sequential before the attention and before the MLP, on the
LN1 / LN2 outputs: ``u' = u + s * B(Dropout(A(u)))``, A a 1x1 conv D -> r, B a grouped (g = 2) 1x1 conv
r -> D, no non-linearity (so it re-parameterises into the next layer). A xavier, B and biases zero: the model
starts as the backbone. 24 * (768 r + r + 384 r + 768) on ViT-B/16.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from peftstudy.methods import fraction, positive_int, positive_number, register


@dataclass(frozen=True)
class Config:
    r: int = field(default=8, metadata={"help": "bottleneck width", "authors_key": "repadapter_bottleneck"})
    scale: float = field(
        default=1.0, metadata={"help": "s, the adapter output's multiplier", "authors_key": "repadapter_scaler"}
    )
    groups: int = field(default=2, metadata={"help": "groups of the up-projection"})
    dropout: float = field(default=0.1, metadata={"help": "dropout between the projections"})

    def __post_init__(self) -> None:
        positive_int("repadapter", "r", self.r)
        positive_number("repadapter", "scale", self.scale)
        fraction("repadapter", "dropout", self.dropout)
        positive_int("repadapter", "groups", self.groups)
        if self.r % self.groups:
            raise ValueError(f"repadapter: r must be a multiple of groups ({self.groups}), got {self.r!r}")


class RepAdapter(nn.Module):
    def __init__(self, dim: int, cfg: Config, device: torch.device) -> None:
        super().__init__()
        self.conv_a = nn.Conv1d(dim, cfg.r, 1, device=device)
        self.conv_b = nn.Conv1d(cfg.r, dim, 1, groups=cfg.groups, device=device)
        self.dropout = nn.Dropout(cfg.dropout)
        self.scale = cfg.scale
        self.merge_factor = 1.0
        nn.init.xavier_uniform_(self.conv_a.weight)
        nn.init.zeros_(self.conv_a.bias)
        nn.init.zeros_(self.conv_b.weight)
        nn.init.zeros_(self.conv_b.bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        delta = self.conv_b(self.dropout(self.conv_a(u.transpose(1, 2)))).transpose(1, 2)
        return u + self.merge_factor * self.scale * delta


def inject(model: nn.Module, cfg: Config) -> list[str]:
    trainable = []
    for i, block in enumerate(model.blocks):
        for norm in ("norm1", "norm2"):
            module = getattr(block, norm)
            module.adapter = RepAdapter(model.embed_dim, cfg, module.weight.device)
            module.register_forward_hook(lambda mod, args, out: mod.adapter(out))
            trainable += [f"blocks.{i}.{norm}.adapter.{n}" for n, _ in module.adapter.named_parameters()]
    return trainable


register("repadapter", Config, inject)
