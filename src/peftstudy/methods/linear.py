"""Linear probing (STUDY.md A.2 #1): only the head trains."""

from dataclasses import dataclass

from torch import nn

from peftstudy.methods import register


@dataclass(frozen=True)
class Config:
    """Linear probing has no settings of its own."""


def inject(model: nn.Module, cfg: Config) -> list[str]:
    return []


register("linear", Config, inject)
