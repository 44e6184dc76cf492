"""The training recipe's choices, written once: the config check and the engine (train/engine.py) read them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RECIPE_CHOICES: dict[str, tuple[str, ...]] = {
    # authors: scheduler.step(epoch) at the end of each epoch, off by one (docs/protocol.md §I.20); standard: step(epoch
    # + 1)
    "lr_step": ("authors", "standard"),
    "augment": ("none", "hflip", "crop_flip", "crop_flips"),
    "precision": ("auto", "fp32", "bf16"),
    "compile": ("off", "default", "reduce-overhead", "max-autotune"),
    "feature_cache": ("exact", "always", "never"),
    "keep": ("last", "best"),
    "peft_init": ("own", "authors"),
    # What makes a run diverged (train/engine.py): explosion (default) adds a loss far above its start to the
    # authors' non_finite rule.
    "divergence": ("explosion", "non_finite"),
}


def check_choices(recipe: Mapping[str, Any], where: str = "recipe") -> None:
    """Every choice the recipe sets is one of RECIPE_CHOICES; the error names `<where>.<key>` and what is allowed."""
    for key, allowed in RECIPE_CHOICES.items():
        if key in recipe and recipe[key] not in allowed:
            raise ValueError(f"{where}.{key} {recipe[key]!r}: use one of {', '.join(allowed)}")
