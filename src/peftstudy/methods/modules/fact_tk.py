"""The layers and `inject` of fact_tk (torch); its settings are peftstudy.methods.fact_tk."""

from __future__ import annotations

import torch
from torch import nn

from peftstudy.methods.fact_tk import Config
from peftstudy.methods.modules._fact import CORES, FacT, attach


class FacTTK(FacT):
    def __init__(self, dim: int, depth: int, cfg: Config, device: torch.device) -> None:
        super().__init__(dim, cfg, device)
        self.tensor = nn.Parameter(torch.empty(cfg.d, cfg.d, cfg.d, device=device))
        self.factors = nn.Parameter(torch.empty(cfg.d, len(CORES) * depth, device=device))
        nn.init.xavier_uniform_(self.tensor)
        nn.init.xavier_uniform_(self.factors)

    def core(self, block: int, name: str) -> torch.Tensor:
        return self.tensor @ self.factors[:, block * len(CORES) + CORES.index(name)]


def inject(model: nn.Module, cfg: Config) -> list[str]:
    fact = FacTTK(model.embed_dim, len(model.blocks), cfg, next(model.parameters()).device)
    attach(model, fact)
    return [f"fact.{n}" for n, _ in fact.named_parameters()]
