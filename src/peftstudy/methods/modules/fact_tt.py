"""The layers and `inject` of fact_tt (torch); its settings are peftstudy.methods.fact_tt."""

from __future__ import annotations

import torch
from torch import nn

from peftstudy.methods.fact_tt import Config
from peftstudy.methods.modules._fact import FacT, attach


class FacTTT(FacT):
    def __init__(self, dim: int, depth: int, cfg: Config, device: torch.device) -> None:
        super().__init__(dim, cfg, device)
        d = cfg.d

        def linear(n_in: int, n_out: int) -> nn.Linear:
            return nn.Linear(n_in, n_out, bias=False, device=device)

        self.cores = nn.ModuleList(
            nn.ModuleDict({**{n: linear(d, d) for n in "qkvo"}, "fc1": linear(d, 4 * d), "fc2": linear(4 * d, d)})
            for _ in range(depth)
        )

    def core(self, block: int, name: str) -> torch.Tensor:
        """C1 and C2 are stored whole; their D-chunk cores are slices of them."""
        cores = self.cores[block]
        if name.startswith("fc1_"):
            c = int(name[-1])
            return cores["fc1"].weight.unflatten(0, (4, -1))[c]
        if name.startswith("fc2_"):
            c = int(name[-1])
            return cores["fc2"].weight.unflatten(1, (4, -1))[:, c]
        return cores[name].weight


def inject(model: nn.Module, cfg: Config) -> list[str]:
    fact = FacTTT(model.embed_dim, len(model.blocks), cfg, next(model.parameters()).device)
    attach(model, fact)
    return [f"fact.{n}" for n, _ in fact.named_parameters()]
