"""The layers and `inject` of ln (torch); its settings are peftstudy.methods.ln."""

from __future__ import annotations

from torch import nn

from peftstudy.methods import layer_norm_names
from peftstudy.methods.ln import Config


def inject(model: nn.Module, cfg: Config) -> list[str]:
    return layer_norm_names(model)
