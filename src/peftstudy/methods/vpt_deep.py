"""VPT-deep (docs/protocol.md §A.2 #8): P new prompt tokens in front of the sequence before every block, removed after
it.

No positional embedding on prompts; dropout 0.1; 9,216 * P trainable on ViT-B/16 (12 blocks x P x 768).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftstudy.methods import fraction, positive_int, register


@dataclass(frozen=True)
class Config:
    num_tokens: int = field(default=10, metadata={"help": "prompt tokens per block (P)", "authors_key": "vpt_num"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the prompts"})

    def __post_init__(self) -> None:
        positive_int("vpt_deep", "num_tokens", self.num_tokens)
        fraction("vpt_deep", "dropout", self.dropout)


register("vpt_deep", Config)
