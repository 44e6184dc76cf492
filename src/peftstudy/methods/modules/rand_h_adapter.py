"""The layers and `inject` of rand_h_adapter (torch); its settings are peftstudy.methods.rand_h_adapter."""

from __future__ import annotations

from torch import nn

from peftstudy.methods.modules._adapters import sequential
from peftstudy.methods.rand_h_adapter import Config


def inject(model: nn.Module, cfg: Config) -> list[str]:
    return sequential(model, (1, 2), cfg.r, cfg.scale, cfg.dropout, "houlsby", cfg.variant)
