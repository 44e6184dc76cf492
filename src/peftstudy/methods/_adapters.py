"""Bottleneck adapters shared by the Houlsby and Pfeiffer adapters and AdaptFormer (docs/protocol.md §A.2 #10-12).

``Adapter(z) = merge_factor * s * Up(Dropout(ReLU(Down(z))))``, D -> r -> D, with the init each method states.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftstudy.methods import fraction, positive_int, positive_number

INITS = ("houlsby", "lora", "kaiming")
VARIANTS = ("authors", "original")


@dataclass(frozen=True)
class SequentialConfig:
    """Settings of a sequential bottleneck adapter (Houlsby, Pfeiffer)."""

    r: int = field(default=64, metadata={"help": "bottleneck width", "authors_key": "adapter_bottleneck"})
    scale: float = field(
        default=0.1, metadata={"help": "s, the adapter output's multiplier", "authors_key": "adapter_scaler"}
    )
    dropout: float = field(default=0.1, metadata={"help": "dropout inside the adapter"})
    variant: str = field(default="authors", metadata={"help": "authors: drop-path/LayerScale twice; original: once"})

    def __post_init__(self) -> None:
        positive_int("adapter", "r", self.r)
        positive_number("adapter", "scale", self.scale)
        fraction("adapter", "dropout", self.dropout)
        if self.variant not in VARIANTS:
            raise ValueError(f"adapter: variant {self.variant!r}; use one of {', '.join(VARIANTS)}")
