"""The layers and `inject` of adaptformer (torch); its settings are peftstudy.methods.adaptformer."""

from __future__ import annotations

from torch import nn

from peftstudy.methods.adaptformer import Config
from peftstudy.methods.modules._adapters import Adapter, Parallel


def inject(model: nn.Module, cfg: Config) -> list[str]:
    trainable = []
    for i, block in enumerate(model.blocks):
        adapter = Adapter(model.embed_dim, cfg.r, cfg.scale, cfg.dropout, "kaiming", block.norm1.weight.device)
        parallel = Parallel(block.drop_path2, block.ls2, adapter)
        block.drop_path2 = parallel
        # The adapter reads the residual stream, LN2's input.
        block.norm2.register_forward_pre_hook(lambda mod, args, parallel=parallel: setattr(parallel, "source", args[0]))
        trainable += [f"blocks.{i}.drop_path2.branch.{n}" for n, _ in adapter.named_parameters()]
    return trainable
