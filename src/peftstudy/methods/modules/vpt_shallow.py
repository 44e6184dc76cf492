"""The layers and `inject` of vpt_shallow (torch); its settings are peftstudy.methods.vpt_shallow."""

from __future__ import annotations

from torch import nn

from peftstudy.methods.modules._prompts import attach
from peftstudy.methods.vpt_shallow import Config


def inject(model: nn.Module, cfg: Config) -> list[str]:
    last = 0 if cfg.variant == "authors" else len(model.blocks) - 1
    return [attach(model, 0, last, cfg.num_tokens, cfg.dropout)]
