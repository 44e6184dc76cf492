"""The layers and `inject` of full (torch); its settings are peftstudy.methods.full."""

from __future__ import annotations

from torch import nn

from peftstudy.methods import exact
from peftstudy.methods.full import Config


def inject(model: nn.Module, cfg: Config) -> list[str]:
    return exact(model, lambda name: True, "full")
