"""FacT-TK (STUDY.md A.2 #16): one shared core tensor T (d x d x d) and a factor matrix P (d x 12 * depth);
the core of matrix j of block i is T x_3 P[:, 12 i + j]. T and P xavier-uniform, U default, V zeros.
2 * 768 d + d^3 + 144 d trainable on ViT-B/16.
"""

from __future__ import annotations

import torch
from torch import nn

from peftstudy.methods import register
from peftstudy.methods._fact import CORES, Config, FacT, attach


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


register("fact_tk", Config, inject)
