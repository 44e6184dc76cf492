"""FacT-TT (docs/protocol.md §A.2 #15): per-block cores Cq, Ck, Cv, Co (d x d), C1 (d -> 4d), C2 (4d -> d).

U and the cores take PyTorch's Linear default init, V zeros, no biases (docs/protocol.md §I.6).
2 * 768 d + 12 * (4 d^2 + 8 d^2) trainable on ViT-B/16.
"""

from __future__ import annotations

from peftstudy.methods import register
from peftstudy.methods._fact import Config

register("fact_tt", Config)
