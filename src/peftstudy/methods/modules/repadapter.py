"""The layers and `inject` of repadapter (torch); its settings are peftstudy.methods.repadapter."""

from __future__ import annotations

import torch
from torch import nn

from peftstudy.methods.repadapter import Config


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
