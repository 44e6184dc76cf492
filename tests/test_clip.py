"""CLIP: the visual tower loaded strictly into timm, the zero-shot head against open_clip computed independently.

A tiny random CLIP (open_clip, OpenAI layout, the real tokenizer and vocabulary) stands in for ViT-B/16; its
visual tower has a matching timm architecture registered here. The real architecture is checked on the meta
device (parameter counts only).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from test_methods import IDS, METHODS
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, _cfg, _create_vision_transformer
from torch import nn

from peftstudy import methods
from peftstudy.cli import main
from peftstudy.models import convert, save_safetensors
from peftstudy.models.clip import class_names, create_clip, zero_shot_head
from peftstudy.plan import specs
from peftstudy.train.runs import count

TINY = "peftstudy_clip_tiny"  # the timm name of the tiny visual tower
TINY_CLIP = "peftstudy-clip-tiny"  # the open_clip name of the whole tiny CLIP
TINY_CFG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
CLASSES = ["goldfish", "fire truck", "tabby cat"]

default_cfgs = generate_default_cfgs(
    {TINY: _cfg(num_classes=0, input_size=(3, 32, 32), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)}
)


@register_model
def peftstudy_clip_tiny(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """TINY_CFG's visual tower with the settings of timm's vit_base_patch16_clip_quickgelu_224."""
    args = dict(
        img_size=32,
        patch_size=16,
        embed_dim=64,
        depth=2,
        num_heads=2,
        pre_norm=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-5),
        act_layer="quick_gelu",
    )
    return _create_vision_transformer(TINY, pretrained=pretrained, **dict(args, **kwargs))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    """The tiny CLIP saved in OpenAI/OpenCLIP layout, its visual tower as timm safetensors, its head."""
    root = tmp_path_factory.mktemp("clip")
    (root / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(root / f"{TINY_CLIP}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP).eval()
    with torch.no_grad():
        for p in model.parameters():  # every tensor distinct from its init, so a swapped one shows
            p.add_(0.02 * torch.randn_like(p))
    checkpoint = root / "clip.bin"
    torch.save(model.state_dict(), checkpoint)
    visual = root / "visual.safetensors"
    save_safetensors(visual, convert(TINY, checkpoint, "torch"))
    head = root / "head.safetensors"
    save_safetensors(head, zero_shot_head(checkpoint, CLASSES, clip_model=TINY_CLIP))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return SimpleNamespace(root=root, model=model, checkpoint=checkpoint, visual=visual, head=head)


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_visual_tower_matches_open_clip(tiny):
    model = create_clip(TINY, len(CLASSES), weights=tiny.visual, head=tiny.head).eval()
    x = images()
    pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(model.head.proj(pre_logits), tiny.model.encode_image(x), atol=1e-5, rtol=0)
    # The head's projection is visual.proj itself, as timm's OpenAI converter maps it.
    torch.testing.assert_close(model.head.proj.weight, tiny.model.visual.proj.T, atol=0, rtol=0)


@torch.no_grad()
def test_zero_shot_logits_are_100_times_the_cosine_to_the_mean_text_embedding(tiny):
    model = create_clip(TINY, len(CLASSES), weights=tiny.visual, head=tiny.head).eval()
    tokenizer = open_clip.get_tokenizer(TINY_CLIP)
    rows = []
    for name in CLASSES:  # one class at a time, as OpenAI's notebook does, not open_clip's batched helper
        prompts = [template(name) for template in open_clip.OPENAI_IMAGENET_TEMPLATES]
        assert len(prompts) == 80
        emb = F.normalize(tiny.model.encode_text(tokenizer(prompts)), dim=-1).mean(dim=0)
        rows.append(emb / emb.norm())
    x = images()
    expected = 100 * F.normalize(tiny.model.encode_image(x), dim=-1) @ torch.stack(rows).T
    torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-5)
    assert torch.equal(model.head.fc.bias, torch.zeros(len(CLASSES)))


def test_the_stage_writes_the_head_with_progress_and_it_loads_back(tiny, capsys):
    out = tiny.root / "stage" / "head.safetensors"
    classes = str(tiny.root / "classes.txt")
    spec = specs.ZeroShotHeadSpec(
        clip=str(tiny.checkpoint), classnames=classes, clip_model=TINY_CLIP, device="cpu", head=str(out)
    )
    main(["run", spec.to_json()])
    assert f"{len(CLASSES)}/{len(CLASSES)} classes ({80 * len(CLASSES)} prompts) encoded" in capsys.readouterr().out
    saved = load_file(out)
    assert sorted(saved) == ["fc.bias", "fc.weight", "proj.weight"]
    for name, tensor in load_file(tiny.head).items():
        assert torch.equal(saved[name], tensor), name
    with safe_open(out, "pt") as handle:
        about = json.loads(handle.metadata()["peftstudy"])
    assert about["num_classes"] == len(CLASSES) and about["classnames"] == classes
    model = create_clip(TINY, len(CLASSES), weights=tiny.visual, head=out)
    assert all(torch.equal(model.head.state_dict()[k], v) for k, v in saved.items())
    assert not [p for p in tiny.root.joinpath("stage").iterdir() if p.name.endswith(".tmp")]


def test_imagenet_names_are_openais_thousand_as_open_clip_has_them():
    names = class_names("imagenet")
    # OpenAI's clean names: "crane bird" (not "crane") at 134; two names repeat, as in OpenAI's list.
    assert len(names) == 1000 and names[0] == "tench" and names[134] == "crane bird" and len(set(names)) == 998
    assert names == list(open_clip.IMAGENET_CLASSNAMES)


def edited_checkpoint(tiny, path: Path, drop: str = "", add: str = "") -> Path:
    state = dict(tiny.model.state_dict())
    if drop:
        del state[drop]
    if add:
        state[add] = torch.zeros(3)
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("drop", "add", "match"),
    [
        ("visual.ln_post.weight", "", r"missing \['norm.weight'\]"),
        ("visual.transformer.resblocks.1.attn.in_proj_bias", "", r"missing \['blocks.1.attn.qkv.bias'\]"),
        ("", "visual.transformer.resblocks.0.ls_1.gamma", r"unexpected \['blocks.0.ls_1.gamma'\]"),
    ],
)
def test_a_missing_or_unexpected_visual_key_is_an_error(tiny, tmp_path, drop, add, match):
    with pytest.raises(ValueError, match=match):
        convert(TINY, edited_checkpoint(tiny, tmp_path / "bad.bin", drop, add), "torch")


@pytest.mark.parametrize(("drop", "add"), [("ln_final.weight", ""), ("", "text_extra")])
def test_a_missing_or_unexpected_text_key_is_an_error(tiny, tmp_path, drop, add):
    with pytest.raises(RuntimeError, match="ln_final.weight" if drop else "text_extra"):
        zero_shot_head(edited_checkpoint(tiny, tmp_path / "bad.bin", drop, add), CLASSES, clip_model=TINY_CLIP)


@pytest.mark.parametrize(
    ("edit", "match"),
    [("drop", r"missing \['fc.bias'\]"), ("add", r"unexpected \['extra'\]"), ("classes", r"other shapes \['fc")],
)
def test_a_head_file_that_does_not_fit_is_an_error(tiny, tmp_path, edit, match):
    state = load_file(tiny.head)
    if edit == "drop":
        del state["fc.bias"]
    elif edit == "add":
        state["extra"] = torch.zeros(1)
    path = tmp_path / "head.safetensors"
    save_safetensors(path, state)
    with pytest.raises(ValueError, match=match):
        create_clip(TINY, len(CLASSES) + (edit == "classes"), weights=tiny.visual, head=path)


@pytest.mark.parametrize("name", ["linear", "full"])
def test_the_head_of_clip_vit_b16_is_906216_trainable_parameters(name):
    """proj 768x512 + Linear(512, 1000) (docs/protocol.md §A.1), counted as head whatever the method."""
    model = create_clip("vit_base_patch16_clip_quickgelu_224", 1000, device="meta")
    trainable = methods.apply(model, name, methods.get(name).config())
    head = set(methods.head_names(model))
    backbone = sum(p.numel() for n, p in model.named_parameters() if n not in head)
    assert count(model, trainable) == ((0 if name == "linear" else backbone), 906_216)


@pytest.mark.parametrize(("name", "cfg", "vitb", "mini", "identity"), METHODS, ids=IDS)
def test_every_method_trains_the_zero_shot_head(tiny, name, cfg, vitb, mini, identity):
    model = create_clip(TINY, len(CLASSES), weights=tiny.visual, head=tiny.head)
    trainable = methods.apply(model, name, methods.get(name).config(**cfg))
    head = ["head.proj.weight", "head.fc.weight", "head.fc.bias"]
    assert methods.head_names(model) == head and trainable[-3:] == head
    model(images(2)).logsumexp(dim=1).sum().backward()
    params = dict(model.named_parameters())
    assert all(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in head)
