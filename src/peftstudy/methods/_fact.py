"""FacT (STUDY.md A.2 #15, #16, I.6): factor-tuning with a U: D -> d and V: d -> D shared by all blocks.

Each adapted Linear gets ``out += merge_factor * s * V(Dropout(C(U(x))))`` for a d x d core C per matrix: q, k
and v on the QKV output (concatenated), o on the attention projection, fc1 in four D-wide chunks of its 4D
output, fc2 on its 4D input in four D-wide chunks (summed). FacT-TT keeps the cores per block (Cq, Ck, Cv,
Co, C1: d -> 4d, C2: 4d -> d); FacT-TK draws them as T x_3 p_j from one shared d x d x d tensor T and 12
columns p_j of a d x 144 factor matrix per block. V starts at zero, so the model starts as the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftstudy.methods import positive_int


@dataclass(frozen=True)
class Config:
    d: int = field(default=8, metadata={"help": "rank of the shared factors U, V"})
    scale: float = field(default=1.0, metadata={"help": "s, the update's multiplier"})
    dropout: float = field(default=0.1, metadata={"help": "dropout between core and V"})

    def __post_init__(self) -> None:
        positive_int("fact", "d", self.d)
