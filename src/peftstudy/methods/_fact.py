"""FacT (docs/protocol.md §A.2 #15, #16, §I.6): factor-tuning with a U: D -> d and V: d -> D shared by all blocks.

Each adapted Linear gets ``out += merge_factor * s * V(Dropout(C(U(x))))`` for a d x d core C per matrix: q, k
and v on the QKV output (concatenated), o on the attention projection, fc1 in four D-wide chunks of its 4D
output, fc2 on its 4D input in four D-wide chunks (summed). FacT-TT keeps the cores per block (Cq, Ck, Cv,
Co, C1: d -> 4d, C2: 4d -> d); FacT-TK forms them from one shared d x d x d tensor T and 12 columns of a
d x (12 * depth) factor matrix per block (fact_tk.py gives the layout of each of its two variants). V starts at
zero, so the model starts as the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftstudy.methods import fraction, positive_int, positive_number


@dataclass(frozen=True)
class Config:
    d: int = field(default=8, metadata={"help": "rank of the shared factors U, V", "authors_key": "fact_dim"})
    scale: float = field(default=1.0, metadata={"help": "s, the update's multiplier", "authors_key": "fact_scaler"})
    dropout: float = field(default=0.1, metadata={"help": "dropout between core and V"})

    def __post_init__(self) -> None:
        positive_int("fact", "d", self.d)
        positive_number("fact", "scale", self.scale)
        fraction("fact", "dropout", self.dropout)
