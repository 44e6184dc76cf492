"""LayerNorm tuning (STUDY.md A.2 #4, I.5): weight and bias of every LayerNorm, the final one and CLIP's ln_pre
included. 38,400 on ViT-B/16; 39,936 on CLIP ViT-B/16."""

from dataclasses import dataclass

from torch import nn

from peftstudy.methods import layer_norm_names, register


@dataclass(frozen=True)
class Config:
    """LayerNorm tuning has no settings of its own."""


def inject(model: nn.Module, cfg: Config) -> list[str]:
    return layer_norm_names(model)


register("ln", Config, inject)
