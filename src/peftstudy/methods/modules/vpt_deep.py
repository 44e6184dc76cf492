"""The layers and `inject` of vpt_deep (torch); its settings are peftstudy.methods.vpt_deep."""

from __future__ import annotations

from torch import nn

from peftstudy.methods.modules._prompts import attach
from peftstudy.methods.vpt_deep import Config


def inject(model: nn.Module, cfg: Config) -> list[str]:
    return [attach(model, i, i, cfg.num_tokens, cfg.dropout) for i in range(len(model.blocks))]
