"""The layers and `inject` of linear (torch); its settings are peftstudy.methods.linear."""

from __future__ import annotations

from torch import nn

from peftstudy.methods.linear import Config


def inject(model: nn.Module, cfg: Config) -> list[str]:
    return []
