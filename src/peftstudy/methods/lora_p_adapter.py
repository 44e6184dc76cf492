"""Pfeiffer adapter, LoRA-style init (docs/protocol.md §A.2 #11, §I.3): one bottleneck adapter per block, sequential
after
the MLP branch. Xavier down, zero up and biases, so the model starts as the backbone. 12 * (1536 r + r + 768).

`variant="authors"` applies the branch's drop-path and LayerScale before the adapter and again after it;
`variant="original"` once.
"""

from __future__ import annotations

from peftstudy.methods import register
from peftstudy.methods._adapters import SequentialConfig as Config

register("lora_p_adapter", Config)
