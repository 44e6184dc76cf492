"""The committed mini backbone: its checksum, strict loading, and that it transfers (docs/scale.md §4)."""

from __future__ import annotations

import sys

import pytest
import torch
import yaml
from conftest import REPO, prepare_mini_task

from peftstudy.models import create_backbone

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
BACKBONE = CONFIG["backbone"]
WEIGHTS = REPO / BACKBONE["weights"]


def test_committed_weights_match_their_checksum_and_load_strictly():
    model = create_backbone(BACKBONE["arch"], 16, weights=WEIGHTS, sha256=BACKBONE["sha256"], keep_head=True)
    assert model.num_classes == 16
    with pytest.raises(ValueError, match=r"sha256 is [0-9a-f]+, expected 0+\."):
        create_backbone(BACKBONE["arch"], 16, weights=WEIGHTS, sha256="0" * 64)


def test_weights_for_another_architecture_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file(create_backbone("peftstudy_vit_test", 3).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="does not fit peftstudy_vit_mini"):
        create_backbone("peftstudy_vit_mini", 3, weights=tmp_path / "w.safetensors")


@pytest.mark.slow
def test_frozen_feature_methods_beat_a_random_backbone_on_every_mini_task(tmp_path, monkeypatch):
    """Linear probing and BitFit on the committed weights against the same on timm's random init."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from backbone_transfer import margins

    monkeypatch.chdir(REPO)
    torch.set_num_threads(2)
    for name in CONFIG["experiments"]["vtab"]["datasets"]:
        prepare_mini_task(tmp_path / name, name, ("train", "val"))
    rows = margins(CONFIG, str(tmp_path))
    assert len(rows) == 2 * len(CONFIG["experiments"]["vtab"]["datasets"])
    losing = [r for r in rows if r["margin"] <= 0]
    assert not losing, losing


def test_a_dinov2_checkpoint_converts_strictly_to_the_224_input_backbone(tmp_path):
    """docs/protocol.md §E: Meta's ViT-B/14 checkpoint (518 px: a 37 x 37 position grid, a mask token) at 224 px
    input."""
    import timm

    from peftstudy.models import convert

    torch.manual_seed(0)
    original = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0).state_dict()
    state = dict(original, mask_token=torch.zeros(1, 768))
    torch.save(state, tmp_path / "dinov2_vitb14_pretrain.pth")
    converted = convert("peftstudy_dinov2_vitb14_224", tmp_path / "dinov2_vitb14_pretrain.pth", "torch")
    assert converted["pos_embed"].shape == (1, 1 + 16 * 16, 768) and "mask_token" not in converted
    torch.testing.assert_close(converted["blocks.3.ls1.gamma"], original["blocks.3.ls1.gamma"])
    torch.save(dict(state, **{"blocks.0.extra": torch.zeros(1)}), tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match="unexpected"):
        convert("peftstudy_dinov2_vitb14_224", tmp_path / "foreign.pth", "torch")
