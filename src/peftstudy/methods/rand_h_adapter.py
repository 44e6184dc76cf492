"""Houlsby adapter, random init (docs/protocol.md §A.2 #10, §I.3): two bottleneck adapters per block, sequential after
the attention and the MLP branch. Xavier weights, N(0, 1e-6) biases. 24 * (1536 r + r + 768) on ViT-B/16.

`variant="authors"` applies the branch's drop-path and LayerScale before the adapter and again after it
(what the study ran); `variant="original"` once.
"""

from __future__ import annotations

from peftstudy.methods import register
from peftstudy.methods._adapters import SequentialConfig as Config

register("rand_h_adapter", Config)
