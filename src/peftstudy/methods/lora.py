"""LoRA as the study ran it (STUDY.md A.2 #9, I.2): one rank-r update of each block's fused QKV projection.

``qkv(u) + merge_factor * B(A(dropout(u)))`` with A: D->r (Kaiming-uniform a=sqrt(5), PyTorch's Linear
default) and B: r->3D (zeros), no bias and no alpha/r scaling, so the model starts as the backbone.
Trainable: 12 * r * (D + 3D) on ViT-B/16 = 36,864 * r.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from peftstudy.methods import register


@dataclass(frozen=True)
class Config:
    r: int = field(default=8, metadata={"help": "rank of the update"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA input"})

    def __post_init__(self) -> None:
        if not (isinstance(self.r, int) and self.r >= 1):
            raise ValueError(f"lora: r must be a positive integer, got {self.r!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora: dropout must be in [0, 1), got {self.dropout!r}")


class LoRALinear(nn.Linear):
    """A Linear that keeps its base tensors under their original names and adds a low-rank branch."""

    def __init__(self, base: nn.Linear, r: int, dropout: float) -> None:
        device = base.weight.device
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        self.lora_a = nn.Linear(base.in_features, r, bias=False, device=device)
        self.lora_b = nn.Linear(r, base.out_features, bias=False, device=device)
        nn.init.zeros_(self.lora_b.weight)
        self.lora_dropout = nn.Dropout(dropout)
        self.merge_factor = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.merge_factor * self.lora_b(self.lora_a(self.lora_dropout(x)))


def inject(model: nn.Module, cfg: Config) -> list[str]:
    trainable = []
    for i, block in enumerate(model.blocks):
        block.attn.qkv = LoRALinear(block.attn.qkv, cfg.r, cfg.dropout)
        trainable += [f"blocks.{i}.attn.qkv.lora_a.weight", f"blocks.{i}.attn.qkv.lora_b.weight"]
    if not trainable:
        raise RuntimeError("lora: the model has no blocks with an attn.qkv projection")
    return trainable


register("lora", Config, inject)
