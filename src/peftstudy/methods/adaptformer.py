"""AdaptFormer (docs/protocol.md §A.2 #12, §I.4): a bottleneck adapter parallel to the MLP, fed the residual stream
before LN2: ``x = x + DP(LS2(mlp(LN2(x)))) + DP(LS2(s * Up(Dropout(ReLU(Down(x))))))``, with its own
drop-path mask. Down: PyTorch's Linear init; Up and biases zero, so the model starts as the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftstudy.methods import fraction, positive_int, positive_number, register


@dataclass(frozen=True)
class Config:
    r: int = field(default=64, metadata={"help": "bottleneck width", "authors_key": "adapter_bottleneck"})
    scale: float = field(
        default=0.1, metadata={"help": "s, the adapter output's multiplier", "authors_key": "adapter_scaler"}
    )
    dropout: float = field(default=0.1, metadata={"help": "dropout inside the adapter"})

    def __post_init__(self) -> None:
        positive_int("adaptformer", "r", self.r)
        positive_number("adaptformer", "scale", self.scale)
        fraction("adaptformer", "dropout", self.dropout)


register("adaptformer", Config)
