"""BitFit (STUDY.md A.2 #3): every bias tensor, LayerNorm and patch-embedding biases included (STUDY.md I.5)."""

from dataclasses import dataclass

from torch import nn

from peftstudy.methods import exact, register


@dataclass(frozen=True)
class Config:
    """BitFit has no settings of its own."""


def inject(model: nn.Module, cfg: Config) -> list[str]:
    # Exact leaf name `bias`, never a substring: a module whose name merely contains "bias" must not match.
    return exact(model, lambda name: name.rsplit(".", 1)[-1] == "bias", "bitfit")


register("bitfit", Config, inject)
