"""Procedurally rendered mini datasets, modelled on VTAB's structured group.

Every image is drawn with numpy from a seeded ``numpy.random.Generator``, so a (task, style, seed)
triple always gives the same pixels. The renderer is deliberately simple (anti-aliasing-free masks
on a noisy background) but the tasks keep the structure of their VTAB models:

- ``count``:       number of objects (CLEVR count_all),
- ``distance``:    depth bin of the closest object, seen in perspective (CLEVR closest_object_distance),
- ``xloc``:        x-position bin of a single object (dSprites label_x_position),
- ``orientation``: orientation bin of a single arrow (dSprites label_orientation),
- ``shapes``:      shape x size class (the pretraining label space; also the robustness task),
- ``digits``:      scikit-learn's bundled 8x8 handwritten digits, resized (a "natural" task).

A *style* changes how scenes are drawn without changing labels; the robustness stage renders
its shifted test sets with other styles, as ImageNet-Sketch/-R re-render ImageNet's classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from peftstudy.plan.specs import Options
from peftstudy.plan.stage_specs import GenerateSpec

# Eight shapes, some stroke-like (ring, bar, ell, crescent), so that pretraining on them yields features
# that also serve handwritten digits.
SHAPES = ("square", "circle", "triangle", "plus", "ring", "bar", "ell", "crescent")


@dataclass(frozen=True)
class Style:
    """How a scene is drawn. Labels never depend on the style."""

    background: str = "noise"  # noise | stripes | plain
    noise: float = 0.08  # std of per-pixel background noise, in [0, 1] units
    palette: str = "bright"  # bright: light objects; dark: dark objects on a light background; grey: white on black
    fill: str = "solid"  # solid | outline
    blur: float = 0.0  # std (pixels) of a Gaussian blur of the finished image
    scale: float = 1.0  # object size multiplier (not in `distance`, where size is the label's cue)

    def __post_init__(self) -> None:
        if self.background not in ("noise", "stripes", "plain"):
            raise ValueError(f"style.background {self.background!r}: use noise, stripes or plain")
        if self.palette not in ("bright", "dark", "grey"):
            raise ValueError(f"style.palette {self.palette!r}: use bright, dark or grey")
        if self.blur < 0 or self.scale <= 0:
            raise ValueError(f"style.blur ({self.blur!r}) must be >= 0 and style.scale ({self.scale!r}) > 0")
        if self.fill not in ("solid", "outline"):
            raise ValueError(f"style.fill {self.fill!r}: use solid or outline")


def _background(rng: np.random.Generator, size: int, style: Style) -> np.ndarray:
    if style.palette == "grey":
        base = np.full(3, rng.uniform(0.0, 0.1))
    else:
        base = rng.uniform(0.0, 0.35, size=3) if style.palette == "bright" else rng.uniform(0.65, 1.0, size=3)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if style.background == "stripes":
        period = rng.integers(3, 7)
        phase = rng.integers(0, period)
        yy, xx = np.mgrid[0:size, 0:size]
        stripe = ((xx + yy + phase) // period) % 2
        img += 0.12 * (stripe[..., None] - 0.5)
    if style.background in ("noise", "stripes") and style.noise > 0:
        img += rng.normal(0.0, style.noise, size=img.shape)
    return img


def _mask(shape: str, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Boolean mask of one shape centred at (cx, cy), `radius` in pixels, `angle` in radians."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    if shape == "square":
        return (np.abs(u) <= radius * 0.8) & (np.abs(v) <= radius * 0.8)
    if shape == "circle":
        return u**2 + v**2 <= radius**2
    if shape == "triangle":
        return (v <= radius * 0.5) & (v >= -radius + 1.732 * np.abs(u))
    if shape == "plus":
        arm = radius / 3
        return ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | ((np.abs(v) <= arm) & (np.abs(u) <= radius))
    if shape == "ring":
        return (u**2 + v**2 <= radius**2) & (u**2 + v**2 >= (0.55 * radius) ** 2)
    if shape == "bar":
        return (np.abs(u) <= radius) & (np.abs(v) <= radius * 0.25)
    if shape == "ell":
        return ((np.abs(u + 0.6 * radius) <= radius * 0.3) & (np.abs(v) <= radius)) | (
            (np.abs(v - 0.7 * radius) <= radius * 0.3) & (np.abs(u) <= radius)
        )
    if shape == "crescent":
        return (u**2 + v**2 <= radius**2) & ((u - 0.45 * radius) ** 2 + v**2 >= (0.8 * radius) ** 2)
    if shape == "arrow":  # isosceles and long: no rotational symmetry, so orientation is well defined
        return (v <= radius * 0.7) & (v >= -radius + 2.2 * np.abs(u))
    raise ValueError(f"unknown shape {shape!r}")


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _draw(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, style: Style) -> None:
    if style.fill == "outline":
        mask = _outline(mask)
    if style.palette == "grey":
        colour = np.full(3, rng.uniform(0.7, 1.0))
    else:
        colour = rng.uniform(0.6, 1.0, size=3) if style.palette == "bright" else rng.uniform(0.0, 0.35, size=3)
    img[mask] = colour


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (reflect padding) of an (H, W, 3) image."""
    radius = max(1, int(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(img, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    rows = sum(w * padded[i : i + img.shape[0]] for i, w in enumerate(taps))
    return sum(w * rows[:, i : i + img.shape[1]] for i, w in enumerate(taps))


def _free_position(rng: np.random.Generator, size: int, radius: float, taken: list[tuple[float, float, float]]):
    """A centre for a new object that keeps it inside the image and off the others (best effort)."""
    low, high = min(radius + 1, size / 2), max(size - radius - 1, size / 2)  # a big object may touch the border
    for _ in range(100):
        cx, cy = rng.uniform(low, high, size=2)
        if all((cx - x) ** 2 + (cy - y) ** 2 > (radius + r + 1) ** 2 for x, y, r in taken):
            return cx, cy
    return cx, cy


def render_count(rng: np.random.Generator, size: int, style: Style, num_classes: int = 6) -> tuple[np.ndarray, int]:
    img = _background(rng, size, style)
    n = int(rng.integers(1, num_classes + 1))
    taken: list[tuple[float, float, float]] = []
    for _ in range(n):
        radius = rng.uniform(0.07, 0.11) * size * style.scale
        cx, cy = _free_position(rng, size, radius, taken)
        taken.append((cx, cy, radius))
        _draw(img, _mask(SHAPES[rng.integers(len(SHAPES))], size, cx, cy, radius, rng.uniform(0, np.pi)), rng, style)
    return img, n - 1


def render_distance(rng: np.random.Generator, size: int, style: Style, num_classes: int = 4) -> tuple[np.ndarray, int]:
    """1-3 objects on a ground plane: nearer objects sit lower and look bigger; label = bin of the nearest."""
    img = _background(rng, size, style)
    depths = rng.uniform(1.0, 3.0, size=int(rng.integers(1, 4)))
    for depth in sorted(depths, reverse=True):  # far to near, so near objects are drawn on top
        radius = 0.16 * size / depth
        cy = size * (0.25 + 0.6 / depth)
        cx = rng.uniform(radius + 1, size - radius - 1)
        _draw(img, _mask(SHAPES[rng.integers(len(SHAPES))], size, cx, cy, radius, rng.uniform(0, np.pi)), rng, style)
    label = int(np.clip((depths.min() - 1.0) / 2.0 * num_classes, 0, num_classes - 1))
    return img, label


def render_xloc(rng: np.random.Generator, size: int, style: Style, num_classes: int = 6) -> tuple[np.ndarray, int]:
    img = _background(rng, size, style)
    radius = rng.uniform(0.09, 0.13) * size * style.scale
    cx = rng.uniform(radius, size - radius)
    cy = rng.uniform(radius, size - radius)
    _draw(img, _mask(SHAPES[rng.integers(len(SHAPES))], size, cx, cy, radius, rng.uniform(0, np.pi)), rng, style)
    label = int(np.clip((cx - radius) / (size - 2 * radius) * num_classes, 0, num_classes - 1))
    return img, label


def render_orientation(
    rng: np.random.Generator, size: int, style: Style, num_classes: int = 8
) -> tuple[np.ndarray, int]:
    img = _background(rng, size, style)
    radius = rng.uniform(0.22, 0.3) * size * style.scale
    cx, cy = rng.uniform(radius, size - radius, size=2)
    label = int(rng.integers(num_classes))
    angle = (label + rng.uniform(0.1, 0.9)) * 2 * np.pi / num_classes
    _draw(img, _mask("arrow", size, cx, cy, radius, angle), rng, style)
    return img, label


def render_shapes(rng: np.random.Generator, size: int, style: Style, num_classes: int = 8) -> tuple[np.ndarray, int]:
    """1-3 objects of one shape and one size class; label = shape x size (small | large)."""
    if num_classes != 2 * len(SHAPES):
        raise ValueError(f"shapes has {2 * len(SHAPES)} classes (shape x size), not {num_classes}")
    img = _background(rng, size, style)
    label = int(rng.integers(num_classes))
    shape, large = SHAPES[label // 2], label % 2
    taken: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(1, 4))):
        radius = (rng.uniform(0.14, 0.19) if large else rng.uniform(0.06, 0.1)) * size * style.scale
        cx, cy = _free_position(rng, size, radius, taken)
        taken.append((cx, cy, radius))
        _draw(img, _mask(shape, size, cx, cy, radius, rng.uniform(0, np.pi)), rng, style)
    return img, label


Renderer = Callable[[np.random.Generator, int, Style, int], tuple[np.ndarray, int]]

RENDERERS: dict[str, Renderer] = {
    "count": render_count,
    "distance": render_distance,
    "xloc": render_xloc,
    "orientation": render_orientation,
    "shapes": render_shapes,
}
TASKS = (*RENDERERS, "digits")


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def render(task: str, n: int, *, size: int, num_classes: int, seed: int, style: Style) -> tuple[np.ndarray, np.ndarray]:
    """`n` images (N, size, size, 3) uint8 and their labels (N,) int64 of a rendered task."""
    if task not in RENDERERS:
        raise ValueError(f"unknown rendered task {task!r}; known: {', '.join(RENDERERS)}")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        img, labels[i] = RENDERERS[task](rng, size, style, num_classes)
        images[i] = _to_uint8(_blur(img, style.blur) if style.blur > 0 else img)
    return images, labels


def digits(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 bundled digits, bilinearly resized to size x size, grey as RGB, shuffled by `seed`."""
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    big = torch.nn.functional.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False)
    rgb = big.repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    order = np.random.default_rng(seed).permutation(len(rgb))
    return _to_uint8(rgb[order]), bunch.target.astype(np.int64)[order]


def derived_seed(*parts: object) -> int:
    """A 32-bit seed from any parts, stable across processes and Python versions (unlike hash())."""
    import hashlib

    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def _render_styles(task: str, n: int, size: int, classes: int, seed: int, styles: list[Style]):
    """`n` images split evenly over `styles` (rendered in chunks), then shuffled together."""
    chunks = [
        render(task, len(part), size=size, num_classes=classes, seed=derived_seed(seed, k), style=style)
        for k, (style, part) in enumerate(zip(styles, np.array_split(np.arange(n), len(styles)), strict=True))
    ]
    images = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks])
    order = np.random.default_rng(seed).permutation(n)
    return images[order], labels[order]


def generate(name: str, spec: dict, seed: int, out_dir: str, manifest: str) -> None:
    """Write dataset `name` of the study config (task, classes, train/val/test sizes, style) as a VTAB-layout source."""
    from peftstudy.data.layout import write_source

    size, classes = spec["image_size"], spec["classes"]
    n_train, n_val, n_test = spec.get("train", 0), spec.get("val", 0), spec["test"]
    if spec["task"] == "digits":
        images, labels = digits(size, derived_seed(seed, name))
        if n_train + n_val + n_test > len(labels):
            raise ValueError(f"datasets.{name}: digits has {len(labels)} images, {n_train + n_val + n_test} requested")
        if classes != 10:
            raise ValueError(f"datasets.{name}.classes: digits has 10 classes, not {classes}")
        pool = images[: n_train + n_val], labels[: n_train + n_val]
        test = images[n_train + n_val : n_train + n_val + n_test], labels[n_train + n_val : n_train + n_val + n_test]
    else:
        raw = spec.get("style", {})
        styles = [Style(**s) for s in raw] if isinstance(raw, list) else [Style(**raw)]
        pool = _render_styles(spec["task"], n_train + n_val, size, classes, derived_seed(seed, name, "pool"), styles)
        test = _render_styles(spec["task"], n_test, size, classes, derived_seed(seed, name, "test"), styles)
    info = {"dataset": name, "source": "synthetic", "classes": classes, "spec": dict(spec, seed=seed)}
    write_source(out_dir, pool, n_train, n_val, test, info, manifest)


def run(spec: GenerateSpec, options: Options) -> None:
    """`peftstudy run` of a generate spec."""
    generate(spec.dataset, spec.rendering, spec.seed, spec.source, spec.manifest)
