"""Full fine-tuning (STUDY.md A.2 #2): every parameter, position embedding, CLS token and patch embedding included."""

from dataclasses import dataclass

from torch import nn

from peftstudy.methods import exact, register


@dataclass(frozen=True)
class Config:
    """Full fine-tuning has no settings of its own (its lr grid is a study setting, STUDY.md I.12)."""


def inject(model: nn.Module, cfg: Config) -> list[str]:
    return exact(model, lambda name: True, "full")


register("full", Config, inject)
