"""Synthetic data in the processed-VTAB layout, the manifest's checksums, the tensor cache, atomic writes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from peftstudy.data import layout, synthetic
from peftstudy.io import atomic_path, load_npz, read_json

SPEC = {"source": "synthetic", "task": "count", "classes": 6, "train": 12, "val": 4, "test": 8, "image_size": 32}


def generate(tmp_path, name="count", spec=SPEC, seed=0):
    out = tmp_path / name
    synthetic.generate(name, spec, seed, str(out / "source"), str(out / "manifest.json"))
    return out


def test_generation_is_deterministic_and_seeded(tmp_path):
    a = generate(tmp_path / "a")
    b = generate(tmp_path / "b")
    c = generate(tmp_path / "c", seed=1)
    assert read_json(a / "manifest.json")["lists"] == read_json(b / "manifest.json")["lists"]
    png = "source/images/train/000003.png"
    assert (a / png).read_bytes() == (b / png).read_bytes() != (c / png).read_bytes()


def test_layout_lists_and_manifest(tmp_path):
    out = generate(tmp_path)
    manifest = read_json(out / "manifest.json", schema="manifest")
    assert manifest["sizes"] == {"train800.txt": 12, "val200.txt": 4, "train800val200.txt": 16, "test.txt": 8}
    for name, digest in manifest["lists"].items():
        assert hashlib.sha256((out / "source" / name).read_bytes()).hexdigest() == digest
    train = (out / "source/train800.txt").read_text().splitlines()
    val = (out / "source/val200.txt").read_text().splitlines()
    assert (out / "source/train800val200.txt").read_text().splitlines() == train + val
    assert not set(train) & set(val)
    assert all(line.startswith("images/test/") for line in (out / "source/test.txt").read_text().splitlines())


@pytest.mark.parametrize(
    ("task", "classes"), [("count", 6), ("distance", 4), ("xloc", 6), ("orientation", 8), ("shapes", 16)]
)
def test_rendered_labels_cover_their_classes(task, classes):
    images, labels = synthetic.render(task, 400, size=32, num_classes=classes, seed=0, style=synthetic.Style())
    assert images.shape == (400, 32, 32, 3) and images.dtype == np.uint8
    assert set(labels) == set(range(classes))


def test_digits_are_scikit_learns(tmp_path):
    images, labels = synthetic.digits(32, seed=0)
    assert images.shape == (1797, 32, 32, 3) and sorted(set(labels)) == list(range(10))
    with pytest.raises(ValueError, match=r"digits has 1797 images, 2000 requested"):
        generate(tmp_path, "digits", dict(SPEC, task="digits", classes=10, train=1000, val=500, test=500))


def test_prepare_caches_a_split_and_refuses_a_tampered_list(tmp_path):
    out = generate(tmp_path)
    layout.prepare(out / "source", out / "manifest.json", "trainval", out / "trainval.npz", 16)
    cache = load_npz(out / "trainval.npz")
    assert cache["images"].shape == (16, 16, 16, 3) and cache["labels"].shape == (16,)
    assert int(cache["num_classes"]) == 6
    with open(out / "source/val200.txt", "a") as handle:
        handle.write("images/train/000000.png 0\n")
    with pytest.raises(ValueError, match=r"val200\.txt: sha256 .* differs from the manifest"):
        layout.prepare(out / "source", out / "manifest.json", "val", out / "val.npz", 32)
    assert not (out / "val.npz").exists()


def test_atomic_writes_leave_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_style_is_refused_by_name():
    with pytest.raises(ValueError, match=r"style\.palette .neon."):
        synthetic.Style(palette="neon")


def test_a_native_size_cache_keeps_the_files_size_and_refuses_mixed_sizes(tmp_path):
    from PIL import Image

    out = generate(tmp_path)
    layout.prepare(out / "source", out / "manifest.json", "val", out / "val.npz", 0)
    native = np.load(out / "val.npz")["images"]
    first = layout.read_list(out / "source/val200.txt")[0][0]
    assert native.shape[1:] == np.asarray(Image.open(out / "source" / first)).shape
    Image.new("RGB", (7, 7)).save(out / "source" / first)
    with pytest.raises(ValueError, match="native-size cache needs one size"):
        layout.prepare(out / "source", out / "manifest.json", "val", out / "val2.npz", 0)
