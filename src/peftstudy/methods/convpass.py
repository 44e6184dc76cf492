"""ConvPass (STUDY.md A.2 #13, I.7): a convolutional bypass parallel to both branches of every block.

Input LN1 / LN2 output: Down (D -> r) -> QuickGELU -> patch tokens on their grid and CLS as a 1x1 image ->
one 3x3 conv r -> r (pad 1, shared by CLS and patches) -> QuickGELU -> Dropout -> Up (r -> D) -> x s, added
beside the branch with its own drop-path and LayerScale. Down xavier, Up and biases zero (the model starts as
the backbone); the conv xavier or "identity" (zeros with I at the centre tap). 24 * (1536 r + r + 768 + 9 r^2
+ r) on ViT-B/16. The grid comes from the patch embedding (the authors hard-code 224 / patch size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from peftstudy.methods import fraction, positive_int, positive_number, register
from peftstudy.methods._adapters import Parallel

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


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class ConvPass(nn.Module):
    def __init__(self, dim: int, grid: tuple[int, int], prefix: int, cfg: Config, device: torch.device) -> None:
        super().__init__()
        self.grid, self.prefix = grid, prefix
        self.down = nn.Linear(dim, cfg.r, device=device)
        self.conv = nn.Conv2d(cfg.r, cfg.r, 3, padding=1, device=device)
        self.up = nn.Linear(cfg.r, dim, device=device)
        self.dropout = nn.Dropout(cfg.dropout)
        self.scale = cfg.scale
        self.merge_factor = 1.0
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        nn.init.zeros_(self.conv.bias)
        if cfg.conv_init == "xavier":
            nn.init.xavier_uniform_(self.conv.weight)
        else:
            nn.init.zeros_(self.conv.weight)
            with torch.no_grad():
                self.conv.weight[:, :, 1, 1] = torch.eye(cfg.r, device=device)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h = quick_gelu(self.down(u))
        b, _, r = h.shape
        cls = h[:, : self.prefix].reshape(b * self.prefix, r, 1, 1)
        patches = h[:, self.prefix :].transpose(1, 2).reshape(b, r, *self.grid)
        cls = self.conv(cls).reshape(b, self.prefix, r)
        patches = self.conv(patches).flatten(2).transpose(1, 2)
        h = quick_gelu(torch.cat([cls, patches], dim=1))
        return self.merge_factor * self.scale * self.up(self.dropout(h))


def inject(model: nn.Module, cfg: Config) -> list[str]:
    grid, prefix = tuple(model.patch_embed.grid_size), model.num_prefix_tokens
    trainable = []
    for i, block in enumerate(model.blocks):
        for k in (1, 2):
            norm = getattr(block, f"norm{k}")
            bypass = ConvPass(model.embed_dim, grid, prefix, cfg, norm.weight.device)
            parallel = Parallel(getattr(block, f"drop_path{k}"), getattr(block, f"ls{k}"), bypass)
            setattr(block, f"drop_path{k}", parallel)
            # The bypass reads the LayerNorm's output.
            norm.register_forward_hook(lambda mod, args, out, parallel=parallel: setattr(parallel, "source", out))
            trainable += [f"blocks.{i}.drop_path{k}.branch.{n}" for n, _ in bypass.named_parameters()]
    return trainable


register("convpass", Config, inject)
