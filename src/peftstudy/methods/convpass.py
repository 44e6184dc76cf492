"""ConvPass (docs/protocol.md §A.2 #13, §I.7): a convolutional bypass parallel to both branches of every block.

Input LN1 / LN2 output: Down (D -> r) -> QuickGELU -> patch tokens on their grid and CLS as a 1x1 image ->
one 3x3 conv r -> r (pad 1, shared by CLS and patches) -> QuickGELU -> Dropout -> Up (r -> D) -> x s, added
beside the branch with its own drop-path and LayerScale. Down xavier, Up and biases zero (the model starts as
the backbone); the conv xavier or "identity" (zeros with I at the centre tap). 24 * (1536 r + r + 768 + 9 r^2
+ r) on ViT-B/16. The grid comes from the patch embedding (the authors hard-code 224 / patch size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftstudy.methods import fraction, positive_int, positive_number, register

CONV_INITS = ("xavier", "identity")


@dataclass(frozen=True)
class Config:
    r: int = field(default=8, metadata={"help": "bottleneck width", "authors_key": "convpass_bottleneck"})
    scale: float = field(
        default=10.0, metadata={"help": "s, the bypass output's multiplier", "authors_key": "convpass_scaler"}
    )
    conv_init: str = field(
        default="xavier",
        metadata={
            "help": "xavier or identity (I at the centre tap)",
            "authors_key": "convpass_xavier_init",
            "authors_values": {"xavier": True, "identity": False},
        },
    )
    dropout: float = field(default=0.1, metadata={"help": "dropout before the up-projection"})

    def __post_init__(self) -> None:
        positive_int("convpass", "r", self.r)
        positive_number("convpass", "scale", self.scale)
        fraction("convpass", "dropout", self.dropout)
        if self.conv_init not in CONV_INITS:
            raise ValueError(f"convpass: conv_init {self.conv_init!r}; use one of {', '.join(CONV_INITS)}")


register("convpass", Config)
