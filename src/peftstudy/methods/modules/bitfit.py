"""The layers and `inject` of bitfit (torch); its settings are peftstudy.methods.bitfit."""

from __future__ import annotations

from torch import nn

from peftstudy.methods import exact
from peftstudy.methods.bitfit import Config


def inject(model: nn.Module, cfg: Config) -> list[str]:
    # Exact leaf name `bias`, never a substring: a module whose name merely contains "bias" must not match.
    return exact(model, lambda name: name.rsplit(".", 1)[-1] == "bias", "bitfit")
