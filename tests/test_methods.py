"""One table of methods x generic checks (HF peft's test_custom_models pattern)."""

from __future__ import annotations

import pytest
import timm
import torch

from peftstudy import methods
from peftstudy.models import create_backbone

# name, method settings, trainable count outside the head on ViT-B/16 (docs/protocol.md §A.3), on the mini ViT,
# and whether the method's own init leaves the backbone's function unchanged. Methods whose added tensors
# cannot be scaled by a merge_factor (prompts) are listed in NO_MERGE.
# Mini ViT: width D=128, 4 blocks, patch 8 on 3 channels, 16 tokens + CLS.
MINI_FULL = (
    (3 * 8 * 8 * 128 + 128)
    + 128
    + 17 * 128
    + 4 * (2 * 256 + (128 * 384 + 384) + (128 * 128 + 128) + (128 * 512 + 512) + (512 * 128 + 128))
    + 256
)
MINI_BITFIT = 4 * (384 + 128 + 512 + 128 + 2 * 128) + 128 + 128
MINI_LN = 4 * 2 * 2 * 128 + 2 * 128
METHODS = [
    ("linear", {}, 0, 0, True),
    ("full", {}, 85_798_656, MINI_FULL, True),
    ("bitfit", {}, 102_912, MINI_BITFIT, True),
    ("ln", {}, 38_400, MINI_LN, True),
    ("difffit", {}, 140_544, MINI_BITFIT + MINI_LN // 2 + 4 * 2 * 128, True),
    ("ssf", {}, 205_824, 2 * (4 * (128 + 384 + 128 + 128 + 512 + 128) + 2 * 128), False),
    ("vpt_shallow", {"num_tokens": 10}, 768 * 10, 128 * 10, False),
    ("vpt_shallow", {"num_tokens": 10, "variant": "original"}, 768 * 10, 128 * 10, False),
    ("vpt_deep", {"num_tokens": 5}, 46_080, 4 * 5 * 128, False),
    ("lora", {"r": 8}, 36_864 * 8, 4 * 8 * (128 + 3 * 128), True),
    ("lora", {"r": 32}, 1_179_648, 4 * 32 * (128 + 3 * 128), True),
    ("lora", {"r": 8, "variant": "original", "alpha": 16}, 36_864 * 8, 4 * 8 * 2 * (128 + 128), True),
    ("rand_h_adapter", {"r": 32}, 1_198_848, 4 * 2 * (2 * 128 * 32 + 32 + 128), False),
    ("rand_h_adapter", {"r": 32, "variant": "original"}, 1_198_848, 4 * 2 * (2 * 128 * 32 + 32 + 128), False),
    ("lora_p_adapter", {"r": 32}, 599_424, 4 * (2 * 128 * 32 + 32 + 128), True),
    ("adaptformer", {"r": 16}, 304_320, 4 * (2 * 128 * 16 + 16 + 128), True),
    ("repadapter", {"r": 16}, 461_184, 4 * 2 * (128 * 16 + 16 + 64 * 16 + 128), True),
    ("repadapter", {"r": 32}, 903_936, 4 * 2 * (128 * 32 + 32 + 64 * 32 + 128), True),
    ("convpass", {"r": 8}, 327_552, 4 * 2 * (2 * 128 * 8 + 8 + 128 + 9 * 64 + 8), True),
    (
        "convpass",
        {"r": 32, "conv_init": "identity"},
        1_420_800,
        4 * 2 * (2 * 128 * 32 + 32 + 128 + 9 * 32**2 + 32),
        True,
    ),
    ("fact_tt", {"d": 32}, 196_608, 2 * 128 * 32 + 4 * 12 * 32**2, True),
    ("fact_tk", {"d": 32}, 86_528, 2 * 128 * 32 + 32**3 + 48 * 32, True),
    ("fact_tk", {"d": 32, "variant": "per_chunk"}, 86_528, 2 * 128 * 32 + 32**3 + 48 * 32, True),
    ("fact_tk", {"d": 1}, 1_681, 2 * 128 + 1 + 48, True),
]
IDS = [f"{name}-{cfg}" for name, cfg, *_ in METHODS]
NO_MERGE = {"vpt_shallow", "vpt_deep"}


def test_table_covers_the_registry():
    assert {row[0] for row in METHODS} == set(methods.names())


def inject(model, name, cfg):
    trainable = methods.apply(model, name, methods.get(name).config(**cfg))
    head = set(methods.head_names(model))
    params = dict(model.named_parameters())
    return trainable, sum(params[n].numel() for n in trainable if n not in head)


@pytest.mark.parametrize(("name", "cfg", "vitb", "mini", "identity"), METHODS, ids=IDS)
def test_trainable_count_on_vit_b16_matches_the_study(name, cfg, vitb, mini, identity):
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", num_classes=100)
    assert inject(model, name, cfg)[1] == vitb


@pytest.mark.parametrize(("name", "cfg", "vitb", "mini", "identity"), METHODS, ids=IDS)
def test_trainable_count_on_the_mini_vit(name, cfg, vitb, mini, identity):
    model = create_backbone("peftstudy_vit_mini", 5, device="meta")
    assert inject(model, name, cfg)[1] == mini


@pytest.mark.parametrize(("name", "cfg", "vitb", "mini", "identity"), METHODS, ids=IDS)
def test_only_the_intended_parameters_receive_gradients(name, cfg, vitb, mini, identity):
    torch.manual_seed(0)
    model = create_backbone("peftstudy_vit_test", 3)
    trainable, _ = inject(model, name, cfg)
    model(torch.rand(4, 3, 16, 16)).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(trainable)
    assert {"head.weight", "head.bias"} <= with_grad


def backbone_and_copy(name, cfg, seed=1):
    """A test-size backbone and a copy of it with the method injected (its own init drawn from `seed`)."""
    torch.manual_seed(0)
    base = create_backbone("peftstudy_vit_test", 3)
    model = create_backbone("peftstudy_vit_test", 3)
    model.load_state_dict(base.state_dict())
    torch.manual_seed(seed)
    trainable, _ = inject(model, name, cfg)
    return base.eval(), model.eval(), trainable


def perturb(model, names):
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].add_(torch.randn_like(params[n]) * 0.1)


@pytest.mark.parametrize(("name", "cfg", "vitb", "mini", "identity"), METHODS, ids=IDS)
def test_own_init_gives_the_backbone_and_merge_factor_zero_removes_the_branch(name, cfg, vitb, mini, identity):
    base, model, trainable = backbone_and_copy(name, cfg)
    x = torch.rand(4, 3, 16, 16)
    if identity:
        torch.testing.assert_close(model(x), base(x), rtol=0, atol=0)
    added = set(trainable) - set(dict(base.named_parameters()))
    perturb(model, added)  # a "trained" branch
    if methods.set_merge_factor(model, 0.0):
        torch.testing.assert_close(model(x), base(x))
        methods.set_merge_factor(model, 1.0)
        assert not torch.allclose(model(x), base(x))
    else:
        # A method that adds tensors must expose a merge_factor (WiSE needs it), unless it cannot (prompts).
        assert not added or name in NO_MERGE


@pytest.mark.parametrize(("name", "cfg", "vitb", "mini", "identity"), METHODS, ids=IDS)
def test_peft_weights_round_trip(name, cfg, vitb, mini, identity, tmp_path):
    from safetensors.torch import load_file, save_file

    _, model, trainable = backbone_and_copy(name, cfg, seed=1)
    perturb(model, trainable)
    params = dict(model.named_parameters())
    save_file({n: params[n].detach().contiguous() for n in trainable}, tmp_path / "peft.safetensors")
    _, fresh, _ = backbone_and_copy(name, cfg, seed=2)
    result = fresh.load_state_dict(load_file(tmp_path / "peft.safetensors"), strict=False)
    assert result.unexpected_keys == []
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(fresh(x), model(x))


@pytest.mark.parametrize(("name", "cfg", "vitb", "mini", "identity"), METHODS, ids=IDS)
def test_a_few_steps_lower_the_loss(name, cfg, vitb, mini, identity):
    from peftstudy.train.engine import Recipe, fit

    torch.manual_seed(0)
    model = create_backbone("peftstudy_vit_test", 3)
    inject(model, name, cfg)
    x, y = torch.rand(32, 3, 16, 16), torch.randint(0, 3, (32,))
    before = torch.nn.functional.cross_entropy(model.eval()(x), y).item()
    fit(model, x, y, lr=0.01, wd=0.0, recipe=Recipe(epochs=10, batch_size=16, lr_step="standard"), seed=0, log_every=0)
    after = torch.nn.functional.cross_entropy(model.eval()(x), y).item()
    assert after < before


@pytest.mark.parametrize(
    ("name", "cfg", "count"), [("fact_tk", {"d": 256}, 17_207_296), ("vpt_deep", {"num_tokens": 100}, 921_600)]
)
def test_large_settings_count_on_vit_b16(name, cfg, count):
    """Settings too big for the generic table's real test models, counted on the meta device only."""
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", num_classes=100)
    assert inject(model, name, cfg)[1] == count


@pytest.mark.parametrize(
    ("name", "count"), [("ln", 39_936), ("difffit", 141_312), ("bitfit", 102_912), ("full", 85_799_424)]
)
def test_trainable_count_on_clip_vit_b16(name, count):
    """CLIP's visual tower: QuickGELU, ln_pre (norm_pre) and no patch-embedding bias (docs/protocol.md §A.3)."""
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_clip_quickgelu_224", num_classes=1000)
    assert inject(model, name, {})[1] == count


# The test ViT sees (16 / 4)^2 = 16 patches + CLS = 17 tokens; VPT-shallow adds 10.
@pytest.mark.parametrize(("variant", "tokens_after_block0"), [("authors", 17), ("original", 17 + 10)])
def test_vpt_shallow_prompts_leave_after_block_0_as_the_authors_or_stay_as_the_original(variant, tokens_after_block0):
    model = create_backbone("peftstudy_vit_test", 3).eval()
    inject(model, "vpt_shallow", {"num_tokens": 10, "variant": variant})
    seen = []
    model.blocks[1].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    model(torch.rand(2, 3, 16, 16))
    assert seen == [tokens_after_block0]


@pytest.mark.parametrize(("variant", "keeps_backbone"), [("authors", False), ("original", True)])
def test_sequential_adapters_apply_layerscale_twice_as_the_authors_or_once(variant, keeps_backbone):
    """docs/protocol.md §I.3: with LayerScale (DINOv2) the authors' zero-initialised adapter already changes the
    model."""
    torch.manual_seed(0)
    base = timm.create_model("peftstudy_vit_test", num_classes=3, init_values=0.5).eval()
    model = timm.create_model("peftstudy_vit_test", num_classes=3, init_values=0.5)
    model.load_state_dict(base.state_dict())
    inject(model, "lora_p_adapter", {"r": 4, "variant": variant})
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(model.eval()(x), base(x)) == keeps_backbone


@pytest.mark.parametrize(
    ("name", "cfg", "still_backbone"),
    [
        ("lora", {"r": 8}, False),
        ("adaptformer", {"r": 8}, False),
        ("fact_tk", {"d": 4}, False),
        ("repadapter", {}, True),
    ],
)
def test_authors_init_overwrites_added_linears_only(name, cfg, still_backbone):
    """docs/protocol.md §I.26: timm's init ran after the PEFT modules, re-drawing every Linear they added."""
    torch.manual_seed(0)
    base = create_backbone("peftstudy_vit_test", 3).eval()
    model = create_backbone("peftstudy_vit_test", 3)
    model.load_state_dict(base.state_dict())
    trainable = methods.apply(model, name, methods.get(name).config(**cfg), linear_init="authors")
    backbone = dict(base.named_parameters())
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in backbone.items() if n in params and n not in trainable)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model.eval()(x), base(x)) == still_backbone
    if name == "lora":
        assert 0.01 < params["blocks.0.attn.qkv.lora_b.weight"].std().item() < 0.03


def test_original_lora_changes_q_and_v_only():
    model = create_backbone("peftstudy_vit_test", 3).eval()
    inject(model, "lora", {"r": 2, "variant": "original"})
    qkv = model.blocks[0].attn.qkv
    x = torch.rand(1, 5, qkv.in_features)
    before = qkv(x)
    torch.nn.init.normal_(qkv.lora_b_q.weight)
    torch.nn.init.normal_(qkv.lora_b_v.weight)
    change = (qkv(x) - before).abs().sum(dim=(0, 1)).unflatten(0, (3, -1)).sum(-1)
    assert change[0] > 0 and change[1] == 0 and change[2] > 0


def test_unknown_grid_key_names_the_method_keys():
    with pytest.raises(
        ValueError, match="method 'lora' takes no grid key 'rank'; its keys: r, dropout, variant, alpha"
    ):
        methods.split_hp("lora", {"lr": 0.1, "rank": 4})


def test_selection_is_by_exact_name():
    model = create_backbone("peftstudy_vit_test", 3, device="meta")
    trainable = methods.get("bitfit").inject(model, methods.get("bitfit").config())
    assert all(n.rsplit(".", 1)[-1] == "bias" for n in trainable) and "head.bias" not in trainable
    assert "blocks.1.attn.qkv.bias" in trainable and "blocks.1.attn.qkv.weight" not in trainable
