"""ImageNet and its shifted sets: gates, deterministic few-shot lists, the layout they write, R/A masks.

Offline: fake trees are built in tmp_path (tiny JPEGs where images are decoded, empty files where only names
matter); miniature set specs stand in for the real counts, except ImageNet-A, built at full scale from empty files.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

from peftstudy import cli
from peftstudy.data import imagenet as inet
from peftstudy.data.layout import prepare, read_list
from peftstudy.io import load_npz, read_json
from peftstudy.plan import stage_specs
from peftstudy.plan.defaults import DEFAULTS
from peftstudy.tables import CLASSNAMES, IMAGENET_A_WNIDS, IMAGENET_R_WNIDS, WNIDS

TINY = (WNIDS[0], WNIDS[1], WNIDS[999])  # labels 0, 1, 999


def touch_tree(base: Path, counts: dict[str, int], name=lambda folder, i: f"{folder}_{i}.JPEG", jpeg=False) -> None:
    """Class folders under `base` with `counts[folder]` files each: empty files, or 8x8 JPEGs if `jpeg`."""
    from PIL import Image

    for folder, n in counts.items():
        (base / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = base / folder / name(folder, i)
            if jpeg:
                Image.new("RGB", (8, 8), (i * 10 % 256, 0, 0)).save(path, format="JPEG")
            else:
                path.touch()


def tiny_imagenet(tmp_path: Path, train: int = 15, val: int = 2) -> tuple[Path, inet.ImageNetSet]:
    """Three classes: `train` training and `val` validation JPEGs each, and the matching miniature spec."""
    root = tmp_path / "imagenet"
    touch_tree(root / "train", dict.fromkeys(TINY, train), jpeg=True)
    touch_tree(root / "val", dict.fromkeys(TINY, val), name=lambda f, i: f"ILSVRC2012_val_{f}_{i}.JPEG", jpeg=True)
    (root / "meta.bin").touch()  # torchvision leaves this at the top: not part of any split
    spec = dataclasses.replace(
        inet.SETS["imagenet"],
        splits={"train": inet.Split("train", TINY, 3 * train), "test": inet.Split("val", TINY, 3 * val, per_class=val)},
    )
    return root, spec


def build_tiny(tmp_path: Path, root: Path, spec: inet.ImageNetSet, tag: str, **kw) -> tuple[Path, dict]:
    out = tmp_path / tag / "source"
    where = tmp_path / tag
    manifest = inet.build("imagenet", root, out, where / "manifest.json", spec=spec, **kw)
    return out, manifest


# ---------------------------------------------------------------------------------------------------------------
# class metadata and masks


def test_class_metadata():
    assert len(WNIDS) == len(set(WNIDS)) == 1000 and list(WNIDS) == sorted(WNIDS)
    assert (WNIDS[0], WNIDS[999]) == ("n01440764", "n15075141")
    assert len(CLASSNAMES) == 1000 and (CLASSNAMES[0], CLASSNAMES[1], CLASSNAMES[999]) == (
        "tench",
        "goldfish",
        "toilet paper",
    )
    for sub in (IMAGENET_R_WNIDS, IMAGENET_A_WNIDS):
        assert len(sub) == len(set(sub)) == 200 and list(sub) == sorted(sub) and set(sub) <= set(WNIDS)


def test_masks_have_200_classes_and_the_right_ones():
    r, a = inet.eval_mask("imagenet_r"), inet.eval_mask("imagenet_a")
    assert r.shape == a.shape == (1000,) and r.dtype == a.dtype == bool
    assert r.sum() == a.sum() == 200
    idx = inet.WNID_INDEX
    assert r[idx["n01443537"]] and not r[idx["n01440764"]]  # goldfish in R, tench not
    assert a[idx["n01498041"]] and not a[idx["n01440764"]]  # stingray in A, tench not
    assert r[idx["n12267677"]] and a[idx["n12267677"]]  # acorn: the last class of both
    assert not a[idx["n01443537"]]  # goldfish is in R but not in A
    for name in ("imagenet", "imagenet_v2", "imagenet_sketch"):
        assert inet.eval_mask(name) is None
    with pytest.raises(ValueError, match="n00000000"):
        inet.class_mask(["n00000000"])


def test_masked_argmax_on_hand_built_logits():
    mask = inet.eval_mask("imagenet_r")
    logits = np.zeros((3, 1000), dtype=np.float32)
    logits[0, 0], logits[0, 1] = 9.0, 5.0  # tench (not in R) wins unmasked; goldfish (in R) wins masked
    logits[1, 999], logits[1, inet.WNID_INDEX["n12267677"]] = 9.0, 1.0  # toilet paper out; acorn in
    logits[2, inet.WNID_INDEX["n01484850"]] = 3.0  # great white shark, in R, wins either way
    restricted = inet.restrict_logits(logits, mask)
    assert restricted.shape == (3, 200)
    preds = inet.masked_predictions(logits, mask)
    assert preds.tolist() == [1, inet.WNID_INDEX["n12267677"], inet.WNID_INDEX["n01484850"]]
    assert logits.argmax(axis=1).tolist()[:2] == [0, 999]
    # 1000-way labels and the 0..199 columns agree: goldfish is R's first class, acorn its last.
    labels = np.array([1, inet.WNID_INDEX["n12267677"], inet.WNID_INDEX["n01484850"]])
    assert inet.subset_labels(labels, mask).tolist() == [0, 199, 1]
    assert (restricted.argmax(axis=1) == inet.subset_labels(labels, mask)).all()
    assert (preds == labels).all()
    with pytest.raises(ValueError, match=r"\[0\]"):
        inet.subset_labels(np.array([0]), mask)  # tench has no column among R's 200
    with pytest.raises(ValueError, match="classes"):
        inet.restrict_logits(np.zeros((1, 10)), mask)


# ---------------------------------------------------------------------------------------------------------------
# the gate


def test_gate_passes_and_records_counts_and_paths(tmp_path):
    root, spec = tiny_imagenet(tmp_path)
    record, scans = inet.gate("imagenet", root, spec)
    assert record["images"] == 51 and record["splits"]["train"]["images"] == 45
    assert record["splits"]["test"] == dict(record["splits"]["test"], folder="val", classes=3, images=6)
    paths = sorted(str(p.relative_to(root)) for p in root.glob("*/*/*"))
    assert record["paths_sha256"] == hashlib.sha256("".join(p + "\n" for p in paths).encode()).hexdigest()
    assert scans["train"][WNIDS[0]] == sorted(f"{WNIDS[0]}_{i}.JPEG" for i in range(15))


@pytest.mark.parametrize(
    ("breakage", "expect"),
    [
        (lambda root: next((root / "val" / WNIDS[1]).iterdir()).unlink(), "without exactly 2 images"),
        (lambda root: (root / "train" / WNIDS[0] / "extra.JPEG").touch(), "46 images in the expected class folders"),
        (lambda root: (root / "val" / "n99999999").mkdir(), "1 unexpected folders in val/: n99999999"),
        (lambda root: (root / "train" / WNIDS[999]).rename(root / "elsewhere"), f"missing from train/: {WNIDS[999]}"),
    ],
)
def test_gate_fails_naming_the_path_count_and_page(tmp_path, breakage, expect):
    root, spec = tiny_imagenet(tmp_path)
    breakage(root)
    with pytest.raises(inet.GateError) as err:
        inet.gate("imagenet", root, spec)
    message = str(err.value)
    assert expect in message
    assert str(root) in message and "https://image-net.org/download-images.php" in message
    assert f"{root}/train/ holding" in message and "45 in all" in message  # the layout and the count expected


def test_gate_of_the_real_sets_says_what_to_download(tmp_path):
    for name, count, page in (
        ("imagenet", "1,281,167", "image-net.org"),
        ("imagenet_v2", "10,000", "vaishaal/ImageNetV2"),
        ("imagenet_sketch", "50,889", "HaohanWang/ImageNet-Sketch"),
        ("imagenet_r", "30,000", "hendrycks/imagenet-r"),
        ("imagenet_a", "7,500", "hendrycks/natural-adv-examples"),
    ):
        root = tmp_path / f"not_there_{name}"
        with pytest.raises(inet.GateError) as err:
            inet.gate(name, root)
        message = str(err.value)
        assert f"{root} does not exist" in message and count in message and page in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(inet.GateError, match="200 of 200 class folders missing") as err:
        inet.gate("imagenet_r", tmp_path / "empty")
    assert "0 images in the expected class folders of the folder, expected 30,000" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# few-shot lists


def test_fewshot_split_is_deterministic_disjoint_and_per_class():
    train = {w: [f"{w}_{i}.JPEG" for i in range(40)] for w in (WNIDS[5], WNIDS[0], WNIDS[999])}
    a = inet.fewshot_split(train, shots=16, val_per_class=4, seed=1992)
    assert a == inet.fewshot_split(dict(reversed(list(train.items()))), 16, 4, 1992)  # insertion order: irrelevant
    assert a != inet.fewshot_split(train, 16, 4, 1993)
    shots, val = a
    assert [w for w, _ in shots] == [WNIDS[0]] * 16 + [WNIDS[5]] * 16 + [WNIDS[999]] * 16  # class order
    assert [w for w, _ in val] == [WNIDS[0]] * 4 + [WNIDS[5]] * 4 + [WNIDS[999]] * 4
    assert not set(shots) & set(val)
    for w in train:  # file order within a class
        names = [f for c, f in shots if c == w]
        assert names == sorted(names)
    # A smaller shot count of the same seed is a subset; a class's draw ignores the other classes.
    assert set(inet.fewshot_split(train, 4, 4, 1992)[0]) <= set(shots)
    alone = inet.fewshot_split({WNIDS[5]: train[WNIDS[5]]}, 16, 4, 1992)
    assert alone[0] == [row for row in shots if row[0] == WNIDS[5]]
    with pytest.raises(ValueError, match=f"{WNIDS[0]} has 40 training images"):
        inet.fewshot_split(train, shots=38, val_per_class=4, seed=1992)


def test_build_imagenet_writes_the_layout_deterministically(tmp_path):
    root, spec = tiny_imagenet(tmp_path)
    out, manifest = build_tiny(tmp_path, root, spec, "a", shots=4, val_per_class=2, seed=1992)
    again, _ = build_tiny(tmp_path, root, spec, "b", shots=4, val_per_class=2, seed=1992)
    other, _ = build_tiny(tmp_path, root, spec, "c", shots=4, val_per_class=2, seed=7)
    for name in ("train800.txt", "val200.txt", "train800val200.txt", "test.txt"):
        data = (out / name).read_bytes()
        assert data == (again / name).read_bytes()
        assert manifest["lists"][name] == hashlib.sha256(data).hexdigest()
    assert (out / "train800.txt").read_bytes() != (other / "train800.txt").read_bytes()
    assert (out / "test.txt").read_bytes() == (other / "test.txt").read_bytes()
    # docs/protocol.md §C.4: the final run trains on the same 100-shot (here 4-shot) list; val only tunes.
    assert (out / "train800val200.txt").read_bytes() == (out / "train800.txt").read_bytes()
    train, val, test = (read_list(out / n) for n in ("train800.txt", "val200.txt", "test.txt"))
    assert manifest["sizes"] == {"train800.txt": 12, "val200.txt": 6, "train800val200.txt": 12, "test.txt": 6}
    assert not {r for r, _ in train} & {r for r, _ in val}
    for rows, per in ((train, 4), (val, 2), (test, 2)):
        assert sorted(np.unique([label for _, label in rows], return_counts=True)[1].tolist()) == [per] * 3
        assert {label for _, label in rows} == {0, 1, 999}
    assert all(rel.startswith("images/train/") for rel, _ in train + val)
    assert all(rel.startswith("images/val/") and rel.split("/")[2] == WNIDS[lab] for rel, lab in test)
    assert (out / "images").is_symlink() and (out / "images").resolve() == root.resolve()
    assert manifest["classes"] == 1000 and manifest["source"] == "manual"
    assert manifest["spec"]["seed"] == 1992 and "default_rng([seed, c])" in manifest["spec"]["sampling"]
    checked = read_json(out / "checked.json")  # the gate's record, in the layout folder
    assert checked == manifest["spec"]["checked"] and checked["images"] == 51
    # layout.prepare reads the user's JPEGs through the link: no copies.
    prepare(out, tmp_path / "a" / "manifest.json", "val", tmp_path / "val.npz", 8)
    cache = load_npz(tmp_path / "val.npz")
    assert cache["images"].shape == (6, 8, 8, 3) and cache["labels"].tolist() == [lab for _, lab in val]
    assert int(cache["num_classes"]) == 1000


def test_v2_labels_are_folder_indices(tmp_path):
    split = inet.Split("", ("0", "1", "2", "10"), 4, per_class=1)
    found = {"10": ["z.jpeg"], "2": ["b.jpeg"], "1": ["c.jpeg"], "0": ["a.jpeg"]}
    rows = inet.eval_rows("imagenet_v2", found, split)
    assert rows == [("0/a.jpeg", 0), ("1/c.jpeg", 1), ("2/b.jpeg", 2), ("10/z.jpeg", 10)]
    assert inet.eval_rows("imagenet_sketch", {WNIDS[3]: ["x.JPEG"]}, inet.Split("", (WNIDS[3],), 1)) == [
        (f"{WNIDS[3]}/x.JPEG", 3)
    ]


# ---------------------------------------------------------------------------------------------------------------
# the CLI stage, on a full-size ImageNet-A tree of empty files (names with spaces, as the real ones)


def imagenet_a_tree(root: Path) -> None:
    counts = {w: 37 + (i < 100) for i, w in enumerate(IMAGENET_A_WNIDS)}  # 100 x 38 + 100 x 37 = 7,500
    touch_tree(root, counts, name=lambda f, i: f"0.{i:06d}_soap dispenser _ soap dispenser_0.{i}.jpg")
    (root / "README.txt").touch()


def test_cli_stage_on_imagenet_a(tmp_path):
    root = tmp_path / "imagenet-a"
    imagenet_a_tree(root)
    out, manifest = tmp_path / "data" / "source", tmp_path / "data" / "manifest.json"
    spec = stage_specs.ImagenetSpec(
        imagenet_set="imagenet_a",
        root=str(root),
        dataset="imagenet_a",
        shots=DEFAULTS["imagenet_shots"],
        val_per_class=DEFAULTS["imagenet_val_per_class"],
        seed=DEFAULTS["imagenet_sample_seed"],
        source=str(out),
        manifest=str(manifest),
    )
    cli.main(["run", spec.to_json()])
    meta = read_json(manifest, schema="manifest")
    assert meta["sizes"] == {"train800.txt": 0, "val200.txt": 0, "train800val200.txt": 0, "test.txt": 7500}
    assert meta["dataset"] == "imagenet_a" and meta["classes"] == 1000
    checked = read_json(out / "checked.json")
    assert checked["images"] == 7500 and checked["splits"]["test"]["classes"] == 200
    rows = read_list(out / "test.txt")
    mask = inet.eval_mask("imagenet_a")
    assert all(mask[label] for _, label in rows)
    assert all(rel.startswith("aliases/") and (out / rel).is_file() for rel, _ in rows)
    first = (out / rows[0][0]).resolve()
    assert first.parent == (root / IMAGENET_A_WNIDS[0]).resolve() and rows[0][1] == inet.WNID_INDEX[first.parent.name]
    with pytest.raises(ValueError, match="empty"):  # nothing can train on a shifted set
        prepare(out, manifest, "train", tmp_path / "x.npz", 8)
    # One image gone: the gate stops the stage before anything is rewritten.
    next((root / IMAGENET_A_WNIDS[7]).iterdir()).unlink()
    before = (out / "test.txt").read_bytes()
    with pytest.raises(inet.GateError, match="7,499 images"):
        cli.main(["run", dataclasses.replace(spec, manifest=str(tmp_path / "elsewhere.json")).to_json()])
    assert (out / "test.txt").read_bytes() == before and not (tmp_path / "elsewhere.json").exists()


def test_the_imagenet_rule_gates_the_users_folder_through_snakemake(tmp_path):
    """The rule the study runs: a missing download fails naming what to get; a complete one is listed."""
    from conftest import copy_repo, tiny_config

    (tmp_path / "repo").mkdir()
    wf = copy_repo(tmp_path / "repo")
    config = tiny_config()
    root = tmp_path / "downloads" / "imagenet-a"
    config["datasets"]["imagenet_a"] = {"source": "manual", "set": "imagenet_a", "path": str(root), "classes": 1000}
    path = wf.config(config, "tiny.yaml")
    target = "results/tiny/data/imagenet_a/manifest.json"
    failed = wf.snakemake("-c1", target, "--configfile", str(path), check=False)
    assert failed.returncode != 0, failed.stderr
    assert "rule source_local" in failed.stderr, failed.stderr[-3000:]
    log = (wf.root / "results/tiny/data/imagenet_a/source.log").read_text()
    assert str(root) in log and "natural-adv-examples" in log and "7,500" in log
    assert not (wf.root / "results/tiny/data/imagenet_a/source").exists()
    imagenet_a_tree(root)
    wf.snakemake("-c1", target, "--configfile", str(path))
    meta = read_json(wf.root / target, schema="manifest")
    assert meta["source"] == "manual" and meta["sizes"]["test.txt"] == 7500
    assert read_json(wf.root / "results/tiny/data/imagenet_a/source/checked.json")["images"] == 7500
