"""LoRA (docs/protocol.md §A.2 #9, §I.2) on each block's fused QKV projection.

`variant="authors"` (what the study ran): one rank-r update of the whole fused projection,
``qkv(u) + B(A(dropout(u)))`` with B: r -> 3D, so q, k and v all change; no alpha/r scaling.
`variant="original"` (Hu et al.): separate rank-r updates of W_q and W_v only, scaled by alpha / r.
A: Kaiming-uniform (PyTorch's Linear default), B: zeros, so the model starts as the backbone.
Both train 12 * r * 3072 = 36,864 * r on ViT-B/16. `merge_factor` scales the update (WiSE).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftstudy.methods import fraction, positive_int, positive_number, register

VARIANTS = ("authors", "original")


@dataclass(frozen=True)
class Config:
    r: int = field(default=8, metadata={"help": "rank of the update", "authors_key": "lora_bottleneck"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA input"})
    variant: str = field(default="authors", metadata={"help": "authors: fused q,k,v, no scaling; original: q and v"})
    alpha: float | None = field(
        default=None, metadata={"help": "original variant: scaling alpha / r (None: alpha = r)"}
    )

    def __post_init__(self) -> None:
        positive_int("lora", "r", self.r)
        fraction("lora", "dropout", self.dropout)
        if self.variant not in VARIANTS:
            raise ValueError(f"lora: variant {self.variant!r}; use one of {', '.join(VARIANTS)}")
        if self.alpha is not None:
            positive_number("lora", "alpha", self.alpha)
        if self.alpha is not None and self.variant == "authors":
            raise ValueError("lora: alpha applies to the original variant only (the authors' LoRA has no scaling)")


register("lora", Config)
