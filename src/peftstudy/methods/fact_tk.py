"""FacT-TK (docs/protocol.md §A.2 #16): one shared core tensor T (d x d x d) and a factor matrix P (d x 12 * depth);
block i owns the 12 columns c = 12 i ... c + 11 of P: q, k, v, o, then four for fc1 and four for fc2.
With M_j = T x_3 P[:, j], i.e. M_j[a, b] = sum_e T[a, b, e] P[e, j], and u = U(x) a row vector:

* q, k, v, o (both variants): delta = s V(Drop(u M_j)), as the authors' code orients the core (not u M_j^T).
* fc1 and fc2 each use one d x 4d core C built from their four columns' M_j. Position m of its 4d-wide code
  side holds chunk m // d of the 3072 features (fc1: z = u C, chunk k's delta = s V(Drop(z[k d:(k+1) d])); fc2:
  the four 768-chunks each through U give h' of 4d, delta = s V(Drop(h' C^T)), one dropout on the summed code,
  as the authors'). The variants differ only in which column of C holds M_j's entry [a, b]:
  - ``variant="authors"`` (the study's code): C[a, m] = M_{first + m % 4}[a, m // 4], T x_3 P reshaped as it
    comes, so the four columns interleave and each chunk mixes all four of them over about d/4 values of T's
    second index (when 4 does not divide d, neighbouring chunks share one; the reshape works for any d).
  - ``variant="per_chunk"`` (the FacT paper's per-chunk reading): C[a, k d + b] = M_{first + k}[a, b], so chunk k
    uses its own column's core alone.
T and P xavier-uniform, U default, V zeros. Both train 2 * 768 d + d^3 + 144 d on ViT-B/16.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftstudy.methods import _fact, register

VARIANTS = ("authors", "per_chunk")


@dataclass(frozen=True)
class Config(_fact.Config):
    variant: str = field(
        default="authors",
        metadata={"help": "authors: fc1/fc2 cores interleave their four P columns; per_chunk: one column per chunk"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"fact_tk: variant {self.variant!r}; use one of {', '.join(VARIANTS)}")


register("fact_tk", Config)
