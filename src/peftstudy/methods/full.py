"""Full fine-tuning (docs/protocol.md §A.2 #2): every parameter, position embedding, CLS token and patch embedding
included."""

from __future__ import annotations

from dataclasses import dataclass

from peftstudy.methods import register


@dataclass(frozen=True)
class Config:
    """Full fine-tuning has no settings of its own (its lr grid is a study setting, docs/protocol.md §I.12)."""


register("full", Config)
