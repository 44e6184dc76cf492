"""Defaults of what the config may leave out, written once: the rules pass them and cli.py's arguments default
to them (imported by the CLI, so nothing else here)."""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, Any] = {
    "allow_unpinned": False,
    "selection_metric": "val_top1",
    "confident_k": 0.25,
    "report_tolerance": 1.0,
    "imagenet_shots": 100,
    "imagenet_val_per_class": 10,
    "imagenet_sample_seed": 1992,
    "manyshot_fold": 0,
    "clip_model": "ViT-B-16-quickgelu",
    "tfds_data_dir": "resources/tfds",
}
