"""RepAdapter (docs/protocol.md §A.2 #14): a linear adapter sequential before the attention and before the MLP, on the
LN1 / LN2 outputs: ``u' = u + s * B(Dropout(A(u)))``, A a 1x1 conv D -> r, B a grouped (g = 2) 1x1 conv
r -> D, no non-linearity (so it re-parameterises into the next layer). A xavier, B and biases zero: the model
starts as the backbone. 24 * (768 r + r + 384 r + 768) on ViT-B/16.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftstudy.methods import fraction, positive_int, positive_number, register


@dataclass(frozen=True)
class Config:
    r: int = field(default=8, metadata={"help": "bottleneck width", "authors_key": "repadapter_bottleneck"})
    scale: float = field(
        default=1.0, metadata={"help": "s, the adapter output's multiplier", "authors_key": "repadapter_scaler"}
    )
    groups: int = field(default=2, metadata={"help": "groups of the up-projection"})
    dropout: float = field(default=0.1, metadata={"help": "dropout between the projections"})

    def __post_init__(self) -> None:
        positive_int("repadapter", "r", self.r)
        positive_number("repadapter", "scale", self.scale)
        fraction("repadapter", "dropout", self.dropout)
        positive_int("repadapter", "groups", self.groups)
        if self.r % self.groups:
            raise ValueError(f"repadapter: r must be a multiple of groups ({self.groups}), got {self.r!r}")


register("repadapter", Config)
