"""FacT-TK (STUDY.md A.2 #16): one shared core tensor T (d x d x d) and a factor matrix P (d x 12 * depth);
the core of matrix j of block i is T x_3 P[:, 12 i + j]. T and P xavier-uniform, U default, V zeros.
2 * 768 d + d^3 + 144 d trainable on ViT-B/16.
"""

from __future__ import annotations

from peftstudy.methods import register
from peftstudy.methods._fact import Config

register("fact_tk", Config)
