"""VPT-shallow (docs/protocol.md §A.2 #7, §I.1): P prompt tokens in front of the sequence at the input of block 0.

`variant="authors"` (the study's runs) drops the prompts again after block 0, so they take part in the
first block only; `variant="original"` keeps them through every block, as VPT describes. 768 * P trainable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftstudy.methods import fraction, positive_int, register

VARIANTS = ("authors", "original")


@dataclass(frozen=True)
class Config:
    num_tokens: int = field(default=10, metadata={"help": "prompt tokens (P)", "authors_key": "vpt_num"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the prompts"})
    variant: str = field(default="authors", metadata={"help": "authors: dropped after block 0; original: kept"})

    def __post_init__(self) -> None:
        positive_int("vpt_shallow", "num_tokens", self.num_tokens)
        fraction("vpt_shallow", "dropout", self.dropout)
        if self.variant not in VARIANTS:
            raise ValueError(f"vpt_shallow: variant {self.variant!r}; use one of {', '.join(VARIANTS)}")


register("vpt_shallow", Config)
