"""The method registry: one module per PEFT method, in the spirit of HF peft's tuners.

A method is two modules. ``methods/<name>.py``, its settings, imports no torch: a frozen dataclass ``Config``
(its grid keys, with help text, checked in ``__post_init__``) and one ``register(name, Config)`` call, so the
DAG checks a study's grids without torch. ``methods/modules/<name>.py`` holds its layers and
``inject(model, cfg) -> list[str]``, which adds its modules and returns the exact names of the parameters it
trains (the head is always trained and never listed); it is imported when a model is built. Both files, and the
shared modules they import, are in the code digest of the method's jobs (plan.depends). Nothing outside this
package names a method: the pipeline discovers them here, so adding a method is these two files plus one row in
the tests' method table.

A grid key the authors' code also had names it in its field metadata (``"authors_key"``, and
``"authors_values"`` where their values differ from ours): the grid is iterated in the order of those names
(:func:`authors_keys`), which decides the authors' ties, and the authors' choices translate to our grid points
(:func:`from_authors`).

Modules that add a branch give it a ``merge_factor`` attribute (1.0 = the trained branch, 0.0 = the
backbone alone), which WiSE sets through :func:`set_merge_factor`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

PACKAGE_DIR = Path(__file__).parent
# Grid keys that belong to the training recipe rather than to a method -> the authors' name of each.
RECIPE_KEYS = {"lr": "lr", "wd": "wd", "drop_path": "drop_path_rate"}


@dataclass(frozen=True)
class Method:
    name: str
    config: type

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config)]

    @property
    def inject(self) -> Callable[[nn.Module, Any], list[str]]:
        """The method's `inject`, from its torch module (imported here, when a model is built)."""
        return importlib.import_module(f"{__name__}.modules.{self.name}").inject


_REGISTRY: dict[str, Method] = {}


def register(name: str, config: type) -> None:
    if name in _REGISTRY:
        raise ValueError(f"method {name!r} is registered twice")
    if name != name.lower() or not name.isidentifier():
        raise ValueError(f"method name {name!r} must be a lowercase identifier")
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"method {name!r}: Config must be a dataclass")
    _REGISTRY[name] = Method(name, config)


def names() -> list[str]:
    """Every method module in this package, found without importing any of them (cheap at DAG build)."""
    return sorted(
        m.name for m in pkgutil.iter_modules([str(PACKAGE_DIR)]) if not m.name.startswith("_") and not m.ispkg
    )


def source_files(name: str) -> list[Path]:
    """The method's own modules, settings and layers (imported by name when a model is built, so plan.depends adds
    them to what a run of the method imports: editing either reruns exactly its jobs)."""
    return [PACKAGE_DIR / f"{name}.py", PACKAGE_DIR / "modules" / f"{name}.py"]


def get(name: str) -> Method:
    if name not in names():
        raise KeyError(f"unknown method {name!r}; known: {', '.join(names())}")
    importlib.import_module(f"{__name__}.{name}")
    return _REGISTRY[name]


@dataclass(frozen=True)
class PointRecipe:
    """A grid point's recipe keys (RECIPE_KEYS), typed: what the optimizer is given (lr, wd) and the stochastic
    depth where the grid sets it (None: the recipe's). The config schema requires lr and wd in every grid."""

    lr: float
    wd: float
    drop_path: float | None = None

    def drop_path_or(self, recipe_drop_path: float) -> float:
        """The point's stochastic depth: its own, else the recipe's."""
        return recipe_drop_path if self.drop_path is None else self.drop_path


def split_hp(name: str, hp: Mapping[str, Any]) -> tuple[PointRecipe, Any]:
    """Split a grid point into its recipe settings and the method's Config; unknown keys name what is allowed."""
    method = get(name)
    unknown = sorted(set(hp) - set(RECIPE_KEYS) - set(method.keys()))
    if unknown:
        raise ValueError(
            f"method {name!r} takes no grid key {', '.join(map(repr, unknown))}; "
            f"its keys: {', '.join(method.keys()) or '(none)'}; recipe keys: {', '.join(RECIPE_KEYS)}"
        )
    cfg = method.config(**{k: v for k, v in hp.items() if k not in RECIPE_KEYS})
    missing = [key for key in ("lr", "wd") if key not in hp]
    if missing:
        raise ValueError(f"method {name!r}: grid point {dict(hp)} has no {' or '.join(missing)}: every grid needs both")
    return PointRecipe(**{k: v for k, v in hp.items() if k in RECIPE_KEYS}), cfg


def authors_keys(name: str) -> dict[str, str]:
    """Our grid key -> the authors' name of it, for the recipe keys and the method's keys the authors had."""
    fields = dataclasses.fields(get(name).config)
    return {**RECIPE_KEYS, **{f.name: f.metadata["authors_key"] for f in fields if "authors_key" in f.metadata}}


def from_authors(name: str, authors_hp: Mapping[str, Any]) -> dict[str, Any]:
    """One of the authors' grid points (a `param_set` or `best_tune` dict) in our key names and values."""
    ours = {theirs: key for key, theirs in authors_keys(name).items()}
    values = {f.name: f.metadata.get("authors_values", {}) for f in dataclasses.fields(get(name).config)}
    unknown = sorted(set(authors_hp) - set(ours))
    if unknown:
        raise ValueError(f"method {name!r} has no grid key the authors called {', '.join(map(repr, unknown))}")
    hp = {}
    for theirs, value in authors_hp.items():
        key = ours[theirs]
        mapped = {v: k for k, v in values.get(key, {}).items()}  # theirs -> ours; empty: the same values
        if mapped and value not in mapped:
            raise ValueError(f"method {name!r}: {theirs}={value!r} is none of {', '.join(map(repr, mapped))}")
        hp[key] = mapped.get(value, value)
    return hp


def positive_int(owner: str, key: str, value: Any) -> None:
    """The check every method Config makes of its sizes (rank, tokens): a positive integer, or a clear error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {key} must be a positive integer, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def positive_number(owner: str, key: str, value: Any) -> None:
    """A multiplier (scale, alpha): a finite number > 0 (0 would switch the method off), or a clear error."""
    if not _is_number(value) or value <= 0:
        raise ValueError(f"{owner}: {key} must be a number > 0, got {value!r}")


def fraction(owner: str, key: str, value: Any) -> None:
    """A dropout rate: a number in [0, 1), or a clear error."""
    if not _is_number(value) or not 0 <= value < 1:
        raise ValueError(f"{owner}: {key} must be a number in [0, 1), got {value!r}")


def head_names(model: nn.Module) -> list[str]:
    head = model.get_classifier()
    by_module = {id(m): prefix for prefix, m in model.named_modules()}
    return [f"{by_module[id(head)]}.{n}" for n, _ in head.named_parameters()]


LINEAR_INITS = ("own", "authors")


def apply(model: nn.Module, name: str, cfg: Any, linear_init: str = "own") -> list[str]:
    """Inject method `name` into `model`, freeze everything else; return every trainable name (head last).

    `linear_init="authors"` re-initialises every Linear layer the method added as timm's ViT init does,
    trunc_normal(std 0.02) weights and zero biases: in the study's runs timm's `init_weights` ran after the
    PEFT modules were built and overwrote their own init (docs/protocol.md §I.26). Conv layers and raw parameters keep
    theirs, as with the timm 0.9.12 the study pinned.
    """
    if linear_init not in LINEAR_INITS:
        raise ValueError(f"linear_init {linear_init!r}; use one of {', '.join(LINEAR_INITS)}")
    existing = {n for n, _ in model.named_parameters()}
    trainable = get(name).inject(model, cfg)
    if linear_init == "authors":
        _timm_reinit_linears(model, existing)
    params = dict(model.named_parameters())
    missing = [n for n in trainable if n not in params]
    if missing:
        raise RuntimeError(f"method {name!r} returned parameter names the model does not have: {missing[:5]}")
    model.requires_grad_(False)
    selected = list(dict.fromkeys([*trainable, *head_names(model)]))
    for n in selected:
        params[n].requires_grad_(True)
    return selected


def set_merge_factor(model: nn.Module, alpha: float) -> int:
    """Scale every added branch by `alpha`; returns how many branches were scaled."""
    touched = 0
    for module in model.modules():
        if hasattr(module, "merge_factor"):
            module.merge_factor = float(alpha)
            touched += 1
    return touched


def exact(model: nn.Module, predicate: Callable[[str], bool], what: str) -> list[str]:
    """Names of parameters (outside the head) for which `predicate(name)` holds; matching nothing is an error."""
    head = set(head_names(model))
    found = [n for n, _ in model.named_parameters() if n not in head and predicate(n)]
    if not found:
        raise RuntimeError(f"{what}: no parameter of the model matched")
    return found


def layer_norm_names(model: nn.Module) -> list[str]:
    """Weight and bias of every LayerNorm outside the head (blocks' norm1/norm2, the final norm, CLIP's norm_pre)."""
    from torch import nn

    head = set(head_names(model))
    found = [
        f"{prefix}.{name}"
        for prefix, module in model.named_modules()
        if isinstance(module, nn.LayerNorm)
        for name, _ in module.named_parameters(recurse=False)
        if f"{prefix}.{name}" not in head
    ]
    if not found:
        raise RuntimeError("the model has no LayerNorm")
    return found


def _timm_reinit_linears(model: nn.Module, existing: set[str]) -> None:
    """timm's init_weights_vit_timm on the Linear layers whose tensors are all new (not the backbone's)."""
    from timm.layers import trunc_normal_
    from torch import nn

    for prefix, module in model.named_modules():
        if isinstance(module, nn.Linear) and not any(
            f"{prefix}.{n}" in existing for n, _ in module.named_parameters(recurse=False)
        ):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
