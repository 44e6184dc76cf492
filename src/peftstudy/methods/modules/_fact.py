"""FacT's shared layers (torch): U, V, the cores' updates through forward hooks; settings in peftstudy.methods._fact."""

from __future__ import annotations

import torch
from torch import nn

from peftstudy.methods._fact import Config

# Cores per block, in the order the d x (12 * depth) factor matrix of FacT-TK assigns its columns.
CORES = ("q", "k", "v", "o", *(f"fc1_{c}" for c in range(4)), *(f"fc2_{c}" for c in range(4)))


class FacT(nn.Module):
    """Shared U and V, and the per-matrix cores a subclass provides through core(block, name)."""

    def __init__(self, dim: int, cfg: Config, device: torch.device) -> None:
        super().__init__()
        self.u = nn.Linear(dim, cfg.d, bias=False, device=device)
        self.v = nn.Linear(cfg.d, dim, bias=False, device=device)
        nn.init.zeros_(self.v.weight)
        self.dropout = nn.Dropout(cfg.dropout)
        self.scale = cfg.scale
        self.merge_factor = 1.0

    def core(self, block: int, name: str) -> torch.Tensor:
        """The d x d matrix C of core `name` (one of CORES) in block `block`, applied as u @ C.T."""
        raise NotImplementedError

    def delta(self, x: torch.Tensor, block: int, names: tuple[str, ...]) -> torch.Tensor:
        """V(C_j U(x)) for each core j, concatenated along the features (q|k|v, or fc1's four chunks)."""
        ux = self.u(x)
        out = [self.v(self.dropout(ux @ self.core(block, n).T)) for n in names]
        return self.merge_factor * self.scale * torch.cat(out, dim=-1)

    def delta_fc2(self, h: torch.Tensor, block: int) -> torch.Tensor:
        """fc2's input in four D-wide chunks, each through U and its own core, summed, then V."""
        chunks = self.u(h.unflatten(-1, (4, -1)))  # (..., 4, d)
        mixed = sum(chunks[..., c, :] @ self.core(block, f"fc2_{c}").T for c in range(4))
        return self.merge_factor * self.scale * self.v(self.dropout(mixed))


def attach(model: nn.Module, fact: FacT) -> None:
    """Add `fact`'s updates to every block's qkv, proj, fc1 and fc2 outputs through forward hooks."""
    model.fact = fact
    hooks = {
        "attn.qkv": lambda i: lambda mod, args, out: out + fact.delta(args[0], i, ("q", "k", "v")),
        "attn.proj": lambda i: lambda mod, args, out: out + fact.delta(args[0], i, ("o",)),
        "mlp.fc1": lambda i: lambda mod, args, out: out + fact.delta(args[0], i, CORES[4:8]),
        "mlp.fc2": lambda i: lambda mod, args, out: out + fact.delta_fc2(args[0], i),
    }
    for i, block in enumerate(model.blocks):
        for path, hook in hooks.items():
            block.get_submodule(path).register_forward_hook(hook(i))
