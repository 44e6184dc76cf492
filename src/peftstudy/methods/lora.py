"""LoRA (STUDY.md A.2 #9, I.2) on each block's fused QKV projection.

`variant="authors"` (what the study ran): one rank-r update of the whole fused projection,
``qkv(u) + B(A(dropout(u)))`` with B: r -> 3D, so q, k and v all change; no alpha/r scaling.
`variant="original"` (Hu et al.): separate rank-r updates of W_q and W_v only, scaled by alpha / r.
A: Kaiming-uniform (PyTorch's Linear default), B: zeros, so the model starts as the backbone.
Both train 12 * r * 3072 = 36,864 * r on ViT-B/16. `merge_factor` scales the update (WiSE).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from peftstudy.methods import fraction, positive_int, positive_number, register

VARIANTS = ("authors", "original")


@dataclass(frozen=True)
class Config:
    r: int = field(default=8, metadata={"help": "rank of the update", "authors_key": "lora_bottleneck"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA input"})
    variant: str = field(default="authors", metadata={"help": "authors: fused q,k,v, no scaling; original: q and v"})
    alpha: float | None = field(
        default=None, metadata={"help": "original variant: scaling alpha / r (None: alpha = r)"}
    )

    def __post_init__(self) -> None:
        positive_int("lora", "r", self.r)
        fraction("lora", "dropout", self.dropout)
        if self.variant not in VARIANTS:
            raise ValueError(f"lora: variant {self.variant!r}; use one of {', '.join(VARIANTS)}")
        if self.alpha is not None:
            positive_number("lora", "alpha", self.alpha)
        if self.alpha is not None and self.variant == "authors":
            raise ValueError("lora: alpha applies to the original variant only (the authors' LoRA has no scaling)")


def _low_rank(n_in: int, r: int, n_out: int, device: torch.device) -> tuple[nn.Linear, nn.Linear]:
    down = nn.Linear(n_in, r, bias=False, device=device)
    up = nn.Linear(r, n_out, bias=False, device=device)
    nn.init.zeros_(up.weight)
    return down, up


class LoRALinear(nn.Linear):
    """The fused QKV Linear, its base tensors under their original names, plus low-rank updates."""

    def __init__(self, base: nn.Linear, cfg: Config) -> None:
        device = base.weight.device
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        self.variant = cfg.variant
        self.lora_dropout = nn.Dropout(cfg.dropout)
        self.merge_factor = 1.0
        dim = base.out_features // 3
        if cfg.variant == "authors":
            self.lora_a, self.lora_b = _low_rank(base.in_features, cfg.r, base.out_features, device)
            self.scaling = 1.0
        else:
            self.lora_a_q, self.lora_b_q = _low_rank(base.in_features, cfg.r, dim, device)
            self.lora_a_v, self.lora_b_v = _low_rank(base.in_features, cfg.r, dim, device)
            self.scaling = (cfg.alpha if cfg.alpha is not None else cfg.r) / cfg.r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        u = self.lora_dropout(x)
        if self.variant == "authors":
            delta = self.lora_b(self.lora_a(u))
        else:
            q, v = self.lora_b_q(self.lora_a_q(u)), self.lora_b_v(self.lora_a_v(u))
            delta = torch.cat([q, torch.zeros_like(q), v], dim=-1)
        return out + self.merge_factor * self.scaling * delta


def inject(model: nn.Module, cfg: Config) -> list[str]:
    trainable = []
    for i, block in enumerate(model.blocks):
        block.attn.qkv = LoRALinear(block.attn.qkv, cfg)
        trainable += [f"blocks.{i}.attn.qkv.{n}" for n, _ in block.attn.qkv.named_parameters() if ".lora_" in f".{n}"]
    if not trainable:
        raise RuntimeError("lora: the model has no blocks with an attn.qkv projection")
    return trainable


register("lora", Config, inject)
