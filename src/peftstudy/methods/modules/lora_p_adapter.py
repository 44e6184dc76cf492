"""The layers and `inject` of lora_p_adapter (torch); its settings are peftstudy.methods.lora_p_adapter."""

from __future__ import annotations

from torch import nn

from peftstudy.methods.lora_p_adapter import Config
from peftstudy.methods.modules._adapters import sequential


def inject(model: nn.Module, cfg: Config) -> list[str]:
    return sequential(model, (2,), cfg.r, cfg.scale, cfg.dropout, "lora", cfg.variant)
