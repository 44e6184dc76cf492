"""SSF, scale and shift of features (docs/protocol.md §A.2 #6): a channel-wise affine ``y = s * y + t`` after the
patch embedding, LN1, QKV, the attention projection, LN2, FC1 (before the activation), FC2 and the final LN.

s ~ N(1, 0.02), t ~ N(0, 0.02), so the model does not start exactly as the backbone. 205,824 trainable on
ViT-B/16. `merge_factor` scales the affine's departure from the identity: 0 gives the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftstudy.methods import register


@dataclass(frozen=True)
class Config:
    """SSF has no settings of its own."""


register("ssf", Config)
