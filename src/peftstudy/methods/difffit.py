"""DiffFit (docs/protocol.md §A.2 #5, §I.5): BitFit's biases + every LayerNorm weight + a gain on each residual branch.

``x = x + g1 * DP(LS1(attn))`` and ``x = x + g2 * DP(LS2(mlp))`` in every block, g in R^D initialised to 1.
The gain multiplies the branch after LayerScale; drop-path scales whole samples, so it commutes with the gain.
140,544 trainable on ViT-B/16 (102,912 biases + 19,200 LN weights + 18,432 gains); 141,312 on CLIP.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftstudy.methods import register


@dataclass(frozen=True)
class Config:
    """DiffFit has no settings of its own."""


register("difffit", Config)
