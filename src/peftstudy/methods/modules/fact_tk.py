"""The layers and `inject` of fact_tk (torch); its settings and the variants' description are
peftstudy.methods.fact_tk."""

from __future__ import annotations

import torch
from torch import nn

from peftstudy.methods.fact_tk import Config
from peftstudy.methods.modules._fact import CORES, FacT, attach


class FacTTK(FacT):
    def __init__(self, dim: int, depth: int, cfg: Config, device: torch.device) -> None:
        super().__init__(dim, cfg, device)
        self.variant = cfg.variant
        self.tensor = nn.Parameter(torch.empty(cfg.d, cfg.d, cfg.d, device=device))
        self.factors = nn.Parameter(torch.empty(cfg.d, len(CORES) * depth, device=device))
        nn.init.xavier_uniform_(self.tensor)
        nn.init.xavier_uniform_(self.factors)

    def wide_core(self, first: int) -> torch.Tensor:
        """The d x 4d core C of fc1 or fc2 from P's columns first .. first + 3 (the variants' one difference)."""
        cores = self.tensor @ self.factors[:, first : first + 4]  # (a, b, j) = M_{first + j}[a, b]
        if self.variant == "authors":
            return cores.flatten(1)  # column 4 b + j
        return cores.transpose(1, 2).flatten(1)  # column j d + b

    def core(self, block: int, name: str) -> torch.Tensor:
        """The matrix the base applies as u @ core.T: for fc1/fc2 chunks, the chunk's d columns of C."""
        first = block * len(CORES)
        if name in ("q", "k", "v", "o"):
            return (self.tensor @ self.factors[:, first + CORES.index(name)]).T
        layer, chunk = name.split("_")
        columns = self.wide_core(first + CORES.index(f"{layer}_0")).unflatten(1, (4, -1))[:, int(chunk)]
        # fc1 reads z = u C (chunk k: u C[:, k]); fc2 sums h'_k C[:, k]^T over its input chunks k.
        return columns.T if layer == "fc1" else columns


def inject(model: nn.Module, cfg: Config) -> list[str]:
    fact = FacTTK(model.embed_dim, len(model.blocks), cfg, next(model.parameters()).device)
    attach(model, fact)
    return [f"fact.{n}" for n, _ in fact.named_parameters()]
