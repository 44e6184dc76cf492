"""Linear probing (docs/protocol.md §A.2 #1): only the head trains."""

from __future__ import annotations

from dataclasses import dataclass

from peftstudy.methods import register


@dataclass(frozen=True)
class Config:
    """Linear probing has no settings of its own."""


register("linear", Config)
