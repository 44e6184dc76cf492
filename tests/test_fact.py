"""FacT against closed forms written from docs/protocol.md §A.2 #15 and #16, every core and every chunk, in float64.

The model's deltas are read off the adapted Linears by hooks registered after FacT's (output minus the Linear's
own function); the closed forms take FacT's tensors and nothing else from the module.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from peftstudy import methods
from peftstudy.models import create_backbone

LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def fact_model(name: str, cfg: dict) -> torch.nn.Module:
    """The test ViT (width 32, 2 blocks) with FacT injected and a non-zero V, so that every delta is non-zero."""
    torch.manual_seed(0)
    model = create_backbone("peftstudy_vit_test", 3)
    methods.apply(model, name, methods.get(name).config(scale=0.7, **cfg))
    torch.nn.init.normal_(model.fact.v.weight)
    return model.double().eval()


def recorded_deltas(model: torch.nn.Module, x: torch.Tensor) -> dict[tuple[int, str], tuple[torch.Tensor, ...]]:
    """(block, layer) -> (the layer's input, what FacT added to its output)."""
    seen = {}
    for i, block in enumerate(model.blocks):
        for layer in LAYERS:

            def record(mod, args, out, key=(i, layer)):
                seen[key] = (args[0], out - F.linear(args[0], mod.weight, mod.bias))

            block.get_submodule(layer).register_forward_hook(record)
    with torch.no_grad():
        model(x)
    return seen


def pieces(delta: torch.Tensor, layer: str) -> dict[str, torch.Tensor]:
    """A layer's delta by core: q, k, v of the QKV output, fc1's four D-wide chunks; o and fc2 whole."""
    if layer == "attn.qkv":
        return dict(zip("qkv", delta.chunk(3, dim=-1), strict=True))
    if layer == "mlp.fc1":
        return {f"fc1_{k}": chunk for k, chunk in enumerate(delta.chunk(4, dim=-1))}
    return {"o" if layer == "attn.proj" else "fc2": delta}


def fact_tk_closed_form(fact, variant: str, block: int, layer: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """docs/protocol.md §A.2 #16 term by term: T, P, U, V, s as the formulas name them; c = 12 * block."""
    T, P, U, V, s = fact.tensor, fact.factors, fact.u.weight, fact.v.weight, fact.scale
    d, c = T.shape[0], 12 * block

    def M(j: int) -> torch.Tensor:  # M_j[a, b] = sum_e T[a, b, e] P[e, j]
        return torch.einsum("abe,e->ab", T, P[:, j])

    def interleaved(first: int) -> torch.Tensor:  # C[a, m] = sum_e T[a, m // 4, e] P[e, first + m % 4]
        C = torch.empty(d, 4 * d, dtype=T.dtype)
        for a in range(d):
            for m in range(4 * d):
                C[a, m] = T[a, m // 4] @ P[:, first + m % 4]
        return C

    if layer in ("attn.qkv", "attn.proj"):
        u = x @ U.T
        names = "qkv" if layer == "attn.qkv" else "o"
        return {n: s * (u @ M(c + "qkvo".index(n))) @ V.T for n in names}
    if layer == "mlp.fc1":
        u = x @ U.T
        if variant == "authors":
            z = u @ interleaved(c + 4)
            return {f"fc1_{k}": s * z[..., k * d : (k + 1) * d] @ V.T for k in range(4)}
        return {f"fc1_{k}": s * (u @ M(c + 4 + k)) @ V.T for k in range(4)}
    h = [x[..., k * V.shape[0] : (k + 1) * V.shape[0]] @ U.T for k in range(4)]  # each 768-chunk through U
    if variant == "authors":
        return {"fc2": s * (torch.cat(h, dim=-1) @ interleaved(c + 8).T) @ V.T}
    return {"fc2": s * sum(h[k] @ M(c + 8 + k).T for k in range(4)) @ V.T}


def fact_tt_closed_form(fact, block: int, layer: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """docs/protocol.md §A.2 #15: per-block Linear cores W applied as W u; C1: d -> 4d, C2: 4d -> d."""
    cores, U, V, s = fact.cores[block], fact.u.weight, fact.v.weight, fact.scale
    if layer in ("attn.qkv", "attn.proj"):
        names = "qkv" if layer == "attn.qkv" else "o"
        return {n: s * (x @ U.T @ cores[n].weight.T) @ V.T for n in names}
    if layer == "mlp.fc1":
        z = x @ U.T @ cores["fc1"].weight.T
        return {f"fc1_{k}": s * z.chunk(4, dim=-1)[k] @ V.T for k in range(4)}
    h = torch.cat([chunk @ U.T for chunk in x.chunk(4, dim=-1)], dim=-1)
    return {"fc2": s * (h @ cores["fc2"].weight.T) @ V.T}


def deviations(name: str, cfg: dict) -> dict[str, float]:
    """Largest |model - closed form| per core and chunk, over both blocks."""
    model = fact_model(name, cfg)
    seen = recorded_deltas(model, torch.rand(2, 3, 16, 16, dtype=torch.float64))
    worst: dict[str, float] = {}
    with torch.no_grad():
        for (block, layer), (x, delta) in seen.items():
            if name == "fact_tk":
                expected = fact_tk_closed_form(model.fact, cfg["variant"], block, layer, x)
            else:
                expected = fact_tt_closed_form(model.fact, block, layer, x)
            got = pieces(delta, layer)
            assert got.keys() == expected.keys()
            for core, value in got.items():
                assert value.abs().max() > 1e-3, f"block {block} {core}: the delta is ~0, the check would be empty"
                worst[core] = max(worst.get(core, 0.0), (value - expected[core]).abs().max().item())
    return worst


# d = 6: the 4d-wide code does not split into whole groups of four, so the authors' chunks straddle them.
@pytest.mark.parametrize("d", [1, 6, 8])
@pytest.mark.parametrize("variant", ["authors", "per_chunk"])
def test_fact_tk_computes_its_closed_form_for_every_core_and_chunk(variant, d):
    worst = deviations("fact_tk", {"d": d, "variant": variant})
    assert set(worst) == {"q", "k", "v", "o", "fc1_0", "fc1_1", "fc1_2", "fc1_3", "fc2"}
    assert max(worst.values()) < 1e-12, worst


@pytest.mark.parametrize("d", [1, 6])
def test_fact_tt_computes_its_closed_form_for_every_core_and_chunk(d):
    worst = deviations("fact_tt", {"d": d})
    assert max(worst.values()) < 1e-12, worst


@pytest.mark.parametrize(("d", "mlp_differs"), [(8, True), (6, True), (1, False)])
def test_the_variants_share_q_k_v_o_and_differ_in_the_mlp_cores(d, mlp_differs):
    """Same weights, same layer inputs: the layouts agree on q, k, v, o and, unless d = 1, not on fc1 and fc2."""
    seen = recorded_deltas(fact_model("fact_tk", {"d": d}), torch.rand(2, 3, 16, 16, dtype=torch.float64))
    per_chunk = fact_model("fact_tk", {"d": d, "variant": "per_chunk"})
    for (block, layer), (x, delta) in seen.items():
        linear = per_chunk.blocks[block].get_submodule(layer)
        with torch.no_grad():
            other = linear(x) - F.linear(x, linear.weight, linear.bias)
        same = torch.allclose(delta, other, rtol=0, atol=1e-12)
        assert same == (layer.startswith("attn") or not mlp_differs), (block, layer)


def test_fact_tk_variant_is_checked_and_the_default_is_the_authors():
    cfg = methods.get("fact_tk").config
    assert cfg().variant == "authors"
    with pytest.raises(ValueError, match="fact_tk: variant 'interleaved'; use one of authors, per_chunk"):
        cfg(variant="interleaved")
    with pytest.raises(ValueError, match="method 'fact_tt' takes no grid key 'variant'"):
        methods.split_hp("fact_tt", {"variant": "authors"})
