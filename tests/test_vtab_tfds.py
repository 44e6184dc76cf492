"""VTAB-1K from TFDS without TensorFlow: split recipes on the real tasks' split sizes, label functions at the
edges of their bins, and the whole build through a fake TFDS module and builder."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from peftstudy import cli
from peftstudy.data import layout, vtab_tasks, vtab_tfds
from peftstudy.io import read_json
from peftstudy.plan import stage_specs

# TFDS split sizes of each task's builder (the versions the processed archive used).
CIFAR100 = {"train": 50000, "test": 10000}
CLEVR = {"train": 70000, "validation": 15000, "test": 15000}
DSPRITES = {"train": 737280}
SMALLNORB = {"train": 24300, "test": 24300}

# task: (TFDS split sizes, classes, val200, test) as task_adaptation slices them; train800 is always train[0:800].
RECIPE_CASES = {
    "cifar": (CIFAR100, 100, "train[45000:45200]", "test[0:10000]"),
    "caltech101": ({"train": 3060, "test": 6084}, 102, "train[2754:2954]", "test[0:6084]"),
    "dtd": ({"train": 1880, "validation": 1880, "test": 1880}, 47, "validation[0:200]", "test[0:1880]"),
    "oxford_flowers102": ({"train": 1020, "validation": 1020, "test": 6149}, 102, "validation[0:200]", "test[0:6149]"),
    "oxford_iiit_pet": ({"train": 3680, "test": 3669}, 37, "train[2944:3144]", "test[0:3669]"),
    "svhn": ({"train": 73257, "test": 26032, "extra": 531131}, 10, "train[65931:66131]", "test[0:26032]"),
    "sun397": ({"train": 76128, "validation": 10875, "test": 21750}, 397, "validation[0:200]", "test[0:21750]"),
    "patch_camelyon": ({"train": 262144, "validation": 32768, "test": 32768}, 2, "validation[0:200]", "test[0:32768]"),
    "eurosat": ({"train": 27000}, 10, "train[16200:16400]", "train[21600:27000]"),
    "resisc45": ({"train": 31500}, 45, "train[18900:19100]", "train[25200:31500]"),
    "diabetic_retinopathy": (
        {"train": 35126, "validation": 10906, "test": 42670},
        5,
        "validation[0:200]",
        "test[0:42670]",
    ),
    "clevr_count": (CLEVR, 8, "train[63000:63200]", "validation[0:15000]"),
    "clevr_dist": (CLEVR, 6, "train[63000:63200]", "validation[0:15000]"),
    "dmlab": ({"train": 65550, "validation": 22628, "test": 22735}, 6, "validation[0:200]", "test[0:22735]"),
    "kitti": ({"train": 6347, "validation": 423, "test": 711}, 4, "validation[0:200]", "test[0:711]"),
    "dsprites_loc": (DSPRITES, 16, "train[589824:590024]", "train[663552:737280]"),
    "dsprites_ori": (DSPRITES, 16, "train[589824:590024]", "train[663552:737280]"),
    "smallnorb_azi": (SMALLNORB, 18, "test[0:200]", "test[12150:24300]"),
    "smallnorb_ele": (SMALLNORB, 9, "test[0:200]", "test[12150:24300]"),
}

# docs/protocol.md §D.1: the commonly cited test sizes, in its order of the 19 tasks (natural 7, specialized 4,
# structured 8).
CITED = "10000 6084 1880 6149 3669 26032 21750 | 32768 5400 6300 42670 | 15000 15000 22735 711 73728 73728 12150 12150"
CITED_TEST_SIZES = dict(zip(RECIPE_CASES, map(int, CITED.replace("|", "").split()), strict=True))


def test_the_table_holds_the_19_vtab_tasks_by_folder_name():
    assert list(vtab_tasks.VTAB_TASKS) == list(RECIPE_CASES)
    assert set(vtab_tasks.TASKS) == {*RECIPE_CASES, "clevr_dist_manyshot"}
    assert all(task.recipe in vtab_tasks.RECIPES for task in vtab_tasks.TASKS.values())


@pytest.mark.parametrize("name", RECIPE_CASES)
def test_recipes_slice_each_task_as_task_adaptation(name):
    sizes, classes, val200, test = RECIPE_CASES[name]
    task = vtab_tasks.VTAB_TASKS[name]
    splits = vtab_tasks.RECIPES[task.recipe](sizes)
    assert task.classes == classes
    assert splits.tfds() == {
        "train800": "train[0:800]",
        "val200": val200,
        "train800val200": f"train[0:800]+{val200}",
        "test": test,
    }
    assert (len(splits.train800), len(splits.val200), len(splits.test)) == (800, 200, CITED_TEST_SIZES[name])


def test_the_many_shot_recipe_tunes_on_disjoint_parts_of_train_and_tests_on_validation():
    splits = vtab_tasks.RECIPES["clevr_dist_manyshot"](CLEVR)
    assert splits.tfds() == {
        "train800": "train[0:63000]",
        "val200": "train[63000:70000]",
        "train800val200": "train[0:63000]+train[63000:70000]",
        "test": "validation[0:15000]",
    }
    assert vtab_tasks.TASKS["clevr_dist_manyshot"].label is vtab_tasks.clevr_closest_distance


def test_a_recipe_refuses_a_split_too_small_or_missing():
    with pytest.raises(ValueError, match="only 150 examples"):
        vtab_tasks.train_validation({"train": 6347, "validation": 150, "test": 711})
    with pytest.raises(ValueError, match="no 'validation' split"):
        vtab_tasks.train_validation({"train": 6347, "test": 711})


@pytest.mark.parametrize(("percent", "n", "index"), [(50, 24300, 12150), (50, 7, 4), (50, 5, 2), (90, 3, 3)])
def test_percent_boundaries_round_as_tfds(percent, n, index):
    assert vtab_tasks.tfds_percent(percent, n) == index  # Python's round, as TFDS's 'closest' rounding


def above(x: float) -> float:
    """The next float32 above x: the values are float32 in TFDS."""
    return float(np.nextafter(np.float32(x), np.float32(np.inf)))


def clevr(depths: list[float]) -> dict:
    n = len(depths)
    coords = np.zeros((n, 3), dtype=np.float32)
    coords[:, 2] = depths
    return {"objects": {"pixel_coords": coords, "size": np.zeros(n, dtype=np.int64)}}


@pytest.mark.parametrize(("objects", "label"), [(3, 0), (4, 1), (10, 7)])
def test_clevr_count_is_objects_minus_three(objects, label):
    assert vtab_tasks.clevr_count(clevr([9.0] * objects)) == label


CLEVR_DEPTHS = [(above(0.0), 0), (8.0, 0), (above(8.0), 1), (8.5, 1), (above(8.5), 2), (9.0, 2), (9.5, 3)]
CLEVR_DEPTHS += [(10.0, 4), (above(10.0), 5), (100.0, 5)]


@pytest.mark.parametrize(("depth", "label"), CLEVR_DEPTHS)
def test_clevr_distance_bins_the_closest_object_on_thresholds(depth, label):
    assert vtab_tasks.clevr_closest_distance(clevr([50.0, depth, 60.0])) == label


def test_a_value_on_no_bin_is_refused():
    with pytest.raises(ValueError, match="no bin"):
        vtab_tasks.clevr_closest_distance(clevr([0.0]))


def kitti(objects: list[tuple[int, float]]) -> dict:
    """KITTI objects as (type, depth z): types 0-2 are Car, Van, Truck; 3 and above are not vehicles."""
    location = np.zeros((len(objects), 3), dtype=np.float32)
    location[:, 2] = [z for _, z in objects]
    return {"objects": {"type": np.array([t for t, _ in objects], dtype=np.int64), "location": location}}


@pytest.mark.parametrize(
    ("objects", "label"),
    [
        ([], 3),  # no object: the no-vehicle class
        ([(3, 5.0), (8, 12.0)], 3),  # pedestrians and misc only
        ([(0, -2.0)], 0),
        ([(0, 8.0)], 0),
        ([(1, above(8.0))], 1),
        ([(2, 20.0)], 1),
        ([(0, above(20.0))], 2),
        ([(0, 999.0)], 2),
        ([(0, above(999.0))], 3),  # beyond the last threshold, lumped with "no vehicle" as in task_adaptation
        ([(3, 2.0), (0, 30.0), (1, 15.0)], 1),  # the closest *vehicle*, not the closest object
    ],
)
def test_kitti_bins_the_closest_vehicle(objects, label):
    assert vtab_tasks.kitti_closest_vehicle(kitti(objects)) == label


def test_dsprites_groups_32_positions_and_40_orientations_into_16_classes():
    xs = [vtab_tasks.dsprites_x_position({"label_x_position": np.int64(v)}) for v in range(32)]
    assert xs == [v // 2 for v in range(32)]
    ori = [vtab_tasks.dsprites_orientation({"label_orientation": np.int64(v)}) for v in range(40)]
    assert ori[:6] == [0, 0, 0, 1, 1, 2] and ori[-1] == 15  # floor(v / 2.5)
    assert sorted(set(np.bincount(ori, minlength=16))) == [2, 3]


def test_plain_and_smallnorb_labels_read_their_field():
    example = {"label": np.int64(4), "label_azimuth": np.int64(17), "label_elevation": np.int64(8)}
    assert vtab_tasks.plain_label(example) == 4
    assert vtab_tasks.smallnorb_azimuth(example) == 17
    assert vtab_tasks.smallnorb_elevation(example) == 8


def test_grey_images_become_rgb_and_dsprites_scales_to_255():
    grey = np.array([[[0], [1]]], dtype=np.uint8)
    rgb = vtab_tfds.to_rgb(grey, 255)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 2, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]
    colour = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert vtab_tfds.to_rgb(colour) is colour


def image(i: int, channels: int = 3) -> np.ndarray:
    return np.full((4, 4, channels), i % 256, dtype=np.uint8)


def check_layout(source: Path, manifest_path: Path, classes: int) -> dict[str, list[tuple[str, int]]]:
    """The written folder read back as the pipeline reads it: lists, images, manifest (schema-checked)."""
    lists = {name: layout.read_list(source / name) for name in layout.SPLIT_LISTS.values()}
    assert lists["train800val200.txt"] == lists["train800.txt"] + lists["val200.txt"]
    manifest = read_json(manifest_path, schema="manifest")
    layout.index(source, manifest["dataset"], classes, {"source": "tfds"}, source.parent / "indexed.json")
    assert read_json(source.parent / "indexed.json")["lists"] == manifest["lists"]
    return lists


def test_the_writer_encodes_jpegs_with_pils_defaults_and_a_valid_manifest(tmp_path):
    splits = {
        "train800": [(image(i), i % 3) for i in range(5)],
        "val200": [(image(10 + i), 2) for i in range(2)],
        "test": [(image(20 + i), i % 3) for i in range(4)],
    }
    info = {"dataset": "toy", "source": "tfds", "classes": 3, "spec": {"recipe": "train_validation"}}
    vtab_tfds.write(tmp_path / "source", splits, info, tmp_path / "manifest.json")
    lists = check_layout(tmp_path / "source", tmp_path / "manifest.json", 3)
    assert lists["val200.txt"] == [("images/val200/000000.jpg", 2), ("images/val200/000001.jpg", 2)]
    assert [label for _, label in lists["test.txt"]] == [0, 1, 2, 0]
    encoded = io.BytesIO()
    Image.fromarray(image(21)).save(encoded, format="JPEG")
    assert (tmp_path / "source/images/test/000001.jpg").read_bytes() == encoded.getvalue()
    manifest = read_json(tmp_path / "manifest.json")
    assert manifest["sizes"] == {"train800.txt": 5, "val200.txt": 2, "train800val200.txt": 7, "test.txt": 4}


class FakeBuilder:
    """A prepared TFDS builder's surface that `build` uses; example k of a split has label k % classes and
    pixels k % 256 (grey ones k % 2, as dSprites), so each list shows which examples it got."""

    def __init__(self, sizes: dict[str, int], classes: int, channels: int = 3, short: int = 0, version="3.0.2"):
        self.info = SimpleNamespace(
            splits={name: SimpleNamespace(num_examples=n) for name, n in sizes.items()}, version=version
        )
        self.classes, self.channels, self.short = classes, channels, short
        self.prepared = False
        self.requests: list[str] = []

    def download_and_prepare(self) -> None:
        self.prepared = True

    def as_dataset(self, split: str, shuffle_files: bool):
        assert not shuffle_files
        self.requests.append(split)
        name, start, stop = re.fullmatch(r"(\w+)\[(\d+):(\d+)\]", split).groups()
        assert int(stop) <= self.info.splits[name].num_examples
        for k in range(int(start), int(stop) - self.short):
            yield {
                "image": image(k, 3) if self.channels == 3 else image(k % 2, 1),  # grey as dSprites: 0/1
                "label": np.int64(k % self.classes),
                "label_x_position": np.int64(k % 32),
            }


@pytest.fixture
def fake_tfds(monkeypatch):
    """`tensorflow_datasets` replaced by a module whose builder() returns the test's FakeBuilder."""
    made = {}

    def builder(name: str, data_dir: str) -> FakeBuilder:
        made.update(name=name, data_dir=data_dir)
        return made["builder"]

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", SimpleNamespace(builder=builder, as_numpy=lambda ds: ds))
    return made


def run_stage(tmp_path: Path, task: str, dataset: str = "") -> tuple[Path, Path]:
    out, manifest = tmp_path / "vtab" / task, tmp_path / "vtab" / f"{task}.json"
    spec = stage_specs.VtabTfdsSpec(
        task=task, data_dir=str(tmp_path / "tfds"), dataset=dataset or task, source=str(out), manifest=str(manifest)
    )
    cli.main(["run", spec.to_json()])
    return out, manifest


def test_the_stage_builds_a_task_through_the_tfds_edge(tmp_path, fake_tfds):
    fake = fake_tfds["builder"] = FakeBuilder({"train": 900, "validation": 250, "test": 30}, classes=47)
    source, manifest_path = run_stage(tmp_path, "dtd", dataset="dtd_tfds")
    assert fake_tfds == {"name": "dtd:3.*.*", "data_dir": str(tmp_path / "tfds"), "builder": fake}
    assert fake.prepared
    assert fake.requests == ["train[0:800]", "validation[0:200]", "test[0:30]"]
    lists = check_layout(source, manifest_path, 47)
    assert [label for _, label in lists["train800.txt"]] == [k % 47 for k in range(800)]
    assert [label for _, label in lists["test.txt"]] == [k % 47 for k in range(30)]
    pixels = layout.decode(source / lists["val200.txt"][199][0], 0)
    assert pixels.shape == (4, 4, 3) and abs(int(pixels[0, 0, 0]) - 199) <= 2  # validation example 199, JPEG'd
    manifest = read_json(manifest_path)
    assert (manifest["dataset"], manifest["source"], manifest["classes"]) == ("dtd_tfds", "tfds", 47)
    assert manifest["spec"] == {
        "task": "dtd",
        "builder": "dtd:3.*.*",
        "version": "3.0.2",
        "recipe": "train_validation",
        "label": "plain_label",
        "splits": {
            "train800": "train[0:800]",
            "val200": "validation[0:200]",
            "train800val200": "train[0:800]+validation[0:200]",
            "test": "test[0:30]",
        },
        "tfds_sizes": {"train": 900, "validation": 250, "test": 30},
    }


def test_grey_dsprites_are_labelled_and_scaled_through_the_stage(tmp_path, fake_tfds):
    fake_tfds["builder"] = FakeBuilder({"train": 1000}, classes=16, channels=1)  # 80/10/10: test = train[900:]
    source, manifest_path = run_stage(tmp_path, "dsprites_loc")
    lists = check_layout(source, manifest_path, 16)
    assert [label for _, label in lists["val200.txt"]] == [(k % 32) // 2 for k in range(800, 1000)]
    assert len(lists["test.txt"]) == 100
    # dSprites' 0/1 pixels times 255: example 801 of train is white on all three channels.
    assert layout.decode(source / lists["val200.txt"][1][0], 0)[0, 0].tolist() == [255, 255, 255]
    assert read_json(manifest_path)["dataset"] == "dsprites_loc"


def test_short_splits_and_labels_outside_the_classes_leave_nothing_behind(tmp_path, fake_tfds):
    fake_tfds["builder"] = FakeBuilder({"train": 900, "validation": 250, "test": 30}, classes=47, short=1)
    with pytest.raises(ValueError, match="TFDS gave 799 examples instead of 800"):
        run_stage(tmp_path, "dtd")
    fake_tfds["builder"] = FakeBuilder({"train": 900, "validation": 250, "test": 30}, classes=100)
    with pytest.raises(ValueError, match=r"label 47, outside 0\.\.46"):
        run_stage(tmp_path, "dtd")
    assert not (tmp_path / "vtab").exists() or not any((tmp_path / "vtab").iterdir())


def test_an_unknown_task_is_refused_before_tensorflow_is_imported(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # importing it would raise
    with pytest.raises(SystemExit, match=r"unknown task 'cifar10'; known: cifar, caltech101,"):
        run_stage(tmp_path, "cifar10")
