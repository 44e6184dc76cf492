"""BitFit (docs/protocol.md §A.2 #3): every bias tensor, LayerNorm and patch-embedding biases included
(docs/protocol.md §I.5)."""

from __future__ import annotations

from dataclasses import dataclass

from peftstudy.methods import register


@dataclass(frozen=True)
class Config:
    """BitFit has no settings of its own."""


register("bitfit", Config)
