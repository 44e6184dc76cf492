"""LayerNorm tuning (docs/protocol.md §A.2 #4, §I.5): weight and bias of every LayerNorm, the final one and CLIP's
ln_pre
included. 38,400 on ViT-B/16; 39,936 on CLIP ViT-B/16.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftstudy.methods import register


@dataclass(frozen=True)
class Config:
    """LayerNorm tuning has no settings of its own."""


register("ln", Config)
