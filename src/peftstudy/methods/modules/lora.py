"""The layers and `inject` of lora (torch); its settings are peftstudy.methods.lora."""

from __future__ import annotations

import torch
from torch import nn

from peftstudy.methods.lora import Config


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
