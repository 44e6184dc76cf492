"""Many-shot subsets (issue 5): small CIFAR-100 and RESISC45 archives and split lists in the authors' formats,
served on 127.0.0.1, fetched, extracted and built into the processed-VTAB layout."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import struct
import threading
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from test_fetch import tar_bytes

from peftstudy import cli
from peftstudy.data import manyshot
from peftstudy.data.fetch import FetchError, download, extract
from peftstudy.data.layout import decode, read_list
from peftstudy.io import read_json
from peftstudy.plan import stage_specs
from peftstudy.plan.tasks import MANYSHOT_SUBSETS

RNG = np.random.default_rng(0)
N_TRAIN, N_TEST = 60, 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1; yields (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def publish(root: Path, files: dict[str, bytes]) -> dict[str, str]:
    """Put files under the served folder; their sha256 by name (the pins the tests use)."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return {name: sha(data) for name, data in files.items()}


def fetch_served(
    served, tmp_path: Path, lists: dict[str, bytes], name: str, archive: bytes, dataset: str, *subsets: str
) -> tuple[dict[str, str], str]:
    """Serve the lists and the archive, then fetch and extract the archive into data/<dataset> and the subsets'
    lists into lists/, as the rules do; (the lists' pins, the archive's sha256)."""
    root, url = served
    pins = publish(root, lists)
    archive_sha = publish(root, {name: archive})[name]
    download(url + name, tmp_path / "archives" / name, archive_sha)
    extract(tmp_path / "archives" / name, tmp_path / "data" / dataset)
    for subset in subsets:
        manyshot.fetch_lists(dataset, subset, tmp_path / "lists", url, pins=pins)
    return pins, archive_sha


# --- CIFAR-100 -------------------------------------------------------------------------------------------


class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did at protocol 2, which wrote CIFAR's batches: str as (SHORT_)BINSTRING.
    Python 3 would write bytes at protocol 2 as calls to _codecs.encode, which the real files never hold."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_string(self, obj: bytes | str) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("ascii")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_string
    dispatch[str] = save_string


def py2_pickle(obj) -> bytes:
    out = io.BytesIO()
    Py2Pickler(out, protocol=2).dump(obj)
    # numpy 1 (which wrote the files) named the reconstructor numpy.core.multiarray; GLOBAL is a text line.
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_batch(n: int, name: bytes) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A batch in CIFAR-100's python format; its bytes, images (N, 32, 32, 3) and fine labels."""
    images = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = RNG.integers(0, 100, n)
    batch = {
        b"filenames": [b"img_%d.png" % i for i in range(n)],
        b"batch_label": name,
        b"fine_labels": [int(x) for x in labels],
        b"coarse_labels": [int(x) // 5 for x in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(n, 3072),  # channel planes, as the real files
    }
    return py2_pickle(batch), images, labels


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


@pytest.fixture
def cifar(served, tmp_path):
    """A CIFAR-100 archive and index files for subsets 500 (5 folds) and 1k, served; fetched and extracted."""
    train, train_x, train_y = cifar_batch(N_TRAIN, b"training batch 1 of 1")
    test, test_x, test_y = cifar_batch(N_TEST, b"testing batch 1 of 1")
    assert train.startswith(b"\x80\x02}") and b"cnumpy.core.multiarray\n_reconstruct" in train
    archive = tar_bytes({"cifar-100-python/train": train, "cifar-100-python/test": test, "cifar-100-python/meta": b""})
    combined = RNG.permutation(N_TRAIN)[:10]
    folds = np.stack([np.roll(combined, 2 * k) for k in range(5)])  # each fold: 8 train, 2 val, same 10
    small = RNG.permutation(N_TRAIN)[:12]
    lists = {
        "cifar100/cifar100-500-trainval_combined.npy": npy(combined),
        "cifar100/cifar100-500-trainval_split_train.npy": npy(folds[:, :8]),
        "cifar100/cifar100-500-trainval_split_val.npy": npy(folds[:, 8:]),
        "cifar100/cifar100-1k-trainval_combined.npy": npy(small),
        "cifar100/cifar100-1k-trainval_split_train.npy": npy(small[:9]),
        "cifar100/cifar100-1k-trainval_split_val.npy": npy(small[9:]),
    }
    pins, archive_sha = fetch_served(
        served, tmp_path, lists, "cifar-100-python.tar.gz", archive, "cifar100", "500", "1k"
    )
    return dict(
        source=tmp_path / "data/cifar100",
        lists=tmp_path / "lists",
        pins=pins,
        archive_sha=archive_sha,
        train=(train_x, train_y),
        test=(test_x, test_y),
        folds=folds,
        small=small,
        url=served[1],
    )


def rows(indices, labels, pool: str) -> list[tuple[str, int]]:
    return [(f"images/{pool}/{i:06d}.png", int(labels[i])) for i in indices]


def test_cifar100_folds_and_subsets_in_the_layout(cifar, tmp_path):
    (train_x, train_y), (test_x, test_y) = cifar["train"], cifar["test"]
    for fold in (0, 3):
        out, manifest = tmp_path / f"f{fold}/source", tmp_path / f"f{fold}/manifest.json"
        manyshot.build("cifar100", "500", fold, cifar["source"], cifar["lists"], out, manifest, pins=cifar["pins"])
        train, val = cifar["folds"][fold, :8], cifar["folds"][fold, 8:]
        assert read_list(out / "train800.txt") == rows(train, train_y, "train")
        assert read_list(out / "val200.txt") == rows(val, train_y, "train")
        assert read_list(out / "train800val200.txt") == rows(cifar["folds"][0], train_y, "train")
        assert read_list(out / "test.txt") == rows(range(N_TEST), test_y, "test")
        # Lossless round trip, and only the subset's train images are written.
        for i in train:
            assert np.array_equal(decode(out / f"images/train/{i:06d}.png", 0), train_x[i])
        assert np.array_equal(decode(out / "images/test/000007.png", 0), test_x[7])
        assert len(list((out / "images/train").iterdir())) == 10
        meta = read_json(manifest, schema="manifest")
        assert meta["dataset"] == f"cifar100-500-fold{fold}" and meta["classes"] == 100
        assert meta["sizes"] == {"train800.txt": 8, "val200.txt": 2, "train800val200.txt": 10, "test.txt": N_TEST}
        assert meta["spec"]["fold"] == fold and meta["spec"]["commit"] == manyshot.COMMIT
        assert set(meta["spec"]["lists"]) == {k for k in cifar["pins"] if "-500-" in k}
    out = tmp_path / "1k/source"
    manyshot.build(
        "cifar100", "1k", 0, cifar["source"], cifar["lists"], out, tmp_path / "1k/m.json", pins=cifar["pins"]
    )
    assert read_list(out / "train800.txt") == rows(cifar["small"][:9], train_y, "train")
    assert read_list(out / "train800val200.txt") == rows(cifar["small"], train_y, "train")
    with pytest.raises(ValueError, match=r"fold 1, but it has folds 0\.\.0"):
        manyshot.build("cifar100", "1k", 1, cifar["source"], cifar["lists"], out, tmp_path / "m.json")


def test_the_cli_fetches_the_lists_and_builds_a_subset(cifar, tmp_path, monkeypatch):
    monkeypatch.setattr(manyshot, "LISTS", cifar["pins"])
    lists = tmp_path / "cli-lists"
    fetch = stage_specs.ManyshotListsSpec(
        kind="cifar100", subset="500", base_url=cifar["url"], pins={}, lists=str(lists)
    )
    cli.main(["run", fetch.to_json()])
    assert sorted(str(p.relative_to(lists)) for p in lists.rglob("*.npy")) == manyshot.subset_files("cifar100", "500")
    checksum = tmp_path / "cifar.tar.gz.sha256"
    checksum.write_text(f"{cifar['archive_sha']}  cifar.tar.gz\n")
    build = stage_specs.ManyshotSpec(
        kind="cifar100",
        subset="500",
        fold=4,
        name="cifar100_500",
        pins={},
        archive=str(cifar["source"]),
        checksum=str(checksum),
        lists=str(lists),
        source=str(tmp_path / "s"),
        manifest=str(tmp_path / "m.json"),
    )
    cli.main(["run", build.to_json()])
    meta = read_json(tmp_path / "m.json", schema="manifest")
    assert meta["dataset"] == "cifar100_500" and meta["spec"]["sha256"] == cifar["archive_sha"]
    assert read_list(tmp_path / "s/val200.txt") == rows(cifar["folds"][4, 8:], cifar["train"][1], "train")


def test_a_corrupt_or_truncated_list_names_the_file_and_both_sums(cifar, served, tmp_path):
    root, url = served
    key = "cifar100/cifar100-1k-trainval_split_val.npy"
    good = cifar["pins"][key]
    path = cifar["lists"] / key
    truncated = path.read_bytes()[:-3]
    path.write_bytes(truncated)
    with pytest.raises(ValueError) as err:
        manyshot.build(
            "cifar100",
            "1k",
            0,
            cifar["source"],
            cifar["lists"],
            tmp_path / "s",
            tmp_path / "m.json",
            pins=cifar["pins"],
        )
    message = str(err.value)
    assert str(path) in message and good in message and sha(truncated) in message and "fetch it again" in message
    assert not (tmp_path / "s").exists() and not (tmp_path / "m.json").exists()
    # The same file served corrupt is refused at download, before anything reads it.
    (root / key).write_bytes(truncated)
    with pytest.raises(FetchError) as err:
        manyshot.fetch_lists("cifar100", "1k", tmp_path / "again", url, pins=cifar["pins"])
    assert good in str(err.value) and sha(truncated) in str(err.value)


def test_a_malicious_pickle_or_npy_is_refused(cifar, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    for payload in (pickle.dumps(Exploit(), protocol=2), py2_pickle({b"data": Exploit()})):
        with pytest.raises(ValueError, match=r"posix\.system is not allowed|os\.system is not allowed"):
            manyshot.parse_batch(payload, Path("train"))
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"train: no b'data'"):
        manyshot.parse_batch(py2_pickle({b"data": [1, 2]}), Path("train"))
    # Index files are read without pickle: an object array is refused.
    with pytest.raises(ValueError, match=r"idx\.npy: not a numpy index array"):
        manyshot.load_indices(npy(np.array([1, None], dtype=object)), Path("idx.npy"), 0, 10)
    with pytest.raises(ValueError, match=r"indices \[99\] outside the 10-image train set"):
        manyshot.load_indices(npy(np.array([1, 99])), Path("idx.npy"), 0, 10)


# --- RESISC45 --------------------------------------------------------------------------------------------

CLASSES = {"mountain": 0, "river": 1, "sparse_residential": 26}


def jpeg(seed: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def text(entries: list[tuple[str, int]]) -> bytes:
    return "".join(f"{rel} {label}\n" for rel, label in entries).encode()


@pytest.fixture
def resisc(served, tmp_path):
    """NWPU-RESISC45-style zip (3 classes x 8 images), pool lists and subsets 225 (5 folds) and 900, served."""
    images = {f"{c}/{c}_{i:03d}.jpg": jpeg(7 * n + i) for n, c in enumerate(CLASSES) for i in range(1, 9)}
    entries = [(rel, CLASSES[rel.split("/")[0]]) for rel in images]
    order = RNG.permutation(len(entries))
    pool_train = [entries[i] for i in order[:18]]
    pool_test = [entries[i] for i in order[18:]]
    combined = pool_train[3:13]
    lists = {"resisc/train.txt": text(pool_train), "resisc/test.txt": text(pool_test)}
    lists["resisc/resisc-225_combine.txt"] = text(combined)
    for k in range(5):
        fold = combined[2 * k :] + combined[: 2 * k]
        lists[f"resisc/resisc-225_train_{k}.txt"] = text(fold[:8])
        lists[f"resisc/resisc-225_val_{k}.txt"] = text(fold[8:])
    lists["resisc/resisc-900_combine.txt"] = text(pool_train[:6])
    lists["resisc/resisc-900_train.txt"] = text(pool_train[:5])
    lists["resisc/resisc-900_val.txt"] = text(pool_train[5:6])
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for rel, data in images.items():
            zf.writestr(f"NWPU-RESISC45/{rel}", data)
    pins, _ = fetch_served(served, tmp_path, lists, "NWPU-RESISC45.zip", archive.getvalue(), "resisc45", "225", "900")
    return dict(
        source=tmp_path / "data/resisc45",
        lists=tmp_path / "lists",
        pins=pins,
        images=images,
        pool_train=pool_train,
        pool_test=pool_test,
        combined=combined,
    )


def layout_rows(entries: list[tuple[str, int]], pool: list[tuple[str, int]], folder: str) -> list[tuple[str, int]]:
    line = {rel: i for i, (rel, _) in enumerate(pool)}
    return [(f"images/{folder}/{line[rel]:06d}.jpg", label) for rel, label in entries]


def test_resisc45_folds_and_subsets_in_the_layout(resisc, tmp_path):
    pool_train, pool_test, combined = resisc["pool_train"], resisc["pool_test"], resisc["combined"]
    for fold in range(5):
        out, manifest = tmp_path / f"f{fold}/source", tmp_path / f"f{fold}/manifest.json"
        manyshot.build("resisc45", "225", fold, resisc["source"], resisc["lists"], out, manifest, pins=resisc["pins"])
        shifted = combined[2 * fold :] + combined[: 2 * fold]
        assert read_list(out / "train800.txt") == layout_rows(shifted[:8], pool_train, "train")
        assert read_list(out / "val200.txt") == layout_rows(shifted[8:], pool_train, "train")
        assert read_list(out / "train800val200.txt") == layout_rows(combined, pool_train, "train")
        assert read_list(out / "test.txt") == layout_rows(pool_test, pool_test, "test")
        meta = read_json(manifest, schema="manifest")
        assert meta["classes"] == 45 and meta["sizes"]["train800.txt"] == 8 and meta["sizes"]["test.txt"] == 6
        assert f"resisc/resisc-225_train_{fold}.txt" in meta["spec"]["lists"]
    # The original JPEG bytes, numbered by the line of the pool list; only the subset's train images.
    rel, _ = combined[0]
    assert (out / layout_rows([combined[0]], pool_train, "train")[0][0]).read_bytes() == resisc["images"][rel]
    assert (out / "images/test/000002.jpg").read_bytes() == resisc["images"][pool_test[2][0]]
    assert len(list((out / "images/train").iterdir())) == len(combined)
    out = tmp_path / "900/source"
    manyshot.build(
        "resisc45", "900", 0, resisc["source"], resisc["lists"], out, tmp_path / "900/m.json", pins=resisc["pins"]
    )
    assert read_list(out / "val200.txt") == layout_rows(pool_train[5:6], pool_train, "train")
    assert read_json(tmp_path / "900/m.json")["dataset"] == "resisc45-900"


def test_a_list_naming_a_missing_image_says_which_list_and_image(resisc, tmp_path):
    rel = resisc["combined"][9][0]  # in the combined list and fold 0's val split
    (resisc["source"] / "NWPU-RESISC45" / rel).unlink()
    with pytest.raises(FileNotFoundError) as err:
        manyshot.build(
            "resisc45",
            "225",
            0,
            resisc["source"],
            resisc["lists"],
            tmp_path / "s",
            tmp_path / "m.json",
            pins=resisc["pins"],
        )
    message = str(err.value)
    assert "resisc-225_val_0.txt" in message and rel in message and "extract the archive again" in message
    assert not (tmp_path / "s").exists()


# --- The pinned table ------------------------------------------------------------------------------------


def test_every_subset_and_fold_has_pinned_lists_at_the_full_commit():
    assert len(manyshot.COMMIT) == 40 and manyshot.COMMIT.startswith("245d262")
    at_commit = f"https://raw.githubusercontent.com/OSU-MLB/PETL_Vision/{manyshot.COMMIT}/data/annotations/"
    assert at_commit == manyshot.BASE_URL
    assert len(manyshot.LISTS) == 15 + 39
    assert all(len(digest) == 64 and int(digest, 16) >= 0 for digest in manyshot.LISTS.values())
    needed = set()
    for dataset, subsets in MANYSHOT_SUBSETS.items():
        for subset in subsets:
            needed |= set(manyshot.subset_files(dataset, subset))
    assert needed == set(manyshot.LISTS)  # every pinned file is used, and every used file pinned
    assert manyshot.subset_lists("resisc45", "450", 4)["val200.txt"] == "resisc/resisc-450_val_4.txt"
    assert manyshot.subset_lists("resisc45", "full", 0)["train800val200.txt"] == "resisc/resisc-full_combine.txt"
    with pytest.raises(ValueError, match=r"fold 5, but it has folds 0\.\.4"):
        manyshot.check_subset("resisc45", "450", 5)
    with pytest.raises(ValueError, match="the authors' subsets are 500, 1k"):
        manyshot.check_subset("cifar100", "2k", 0)


def test_the_manyshot_rules_fetch_build_and_prepare_a_subset_through_snakemake(cifar, tmp_path):
    """The study's own rules: the archive and the lists (from a mirror, with their sums) fetched over HTTP,
    extracted, built into the layout and prepared, as `source: manyshot` datasets are."""
    from conftest import copy_repo, tiny_config

    (tmp_path / "repo").mkdir()
    wf = copy_repo(tmp_path / "repo")
    config = tiny_config()
    config["archives"] = {"cifar100": {"url": cifar["url"] + "cifar-100-python.tar.gz", "sha256": cifar["archive_sha"]}}
    config["manyshot_lists"] = {"url": cifar["url"], "sha256": cifar["pins"]}
    config["datasets"]["cifar100_1k"] = {
        "source": "manyshot",
        "kind": "cifar100",
        "subset": "1k",
        "archive": "cifar100",
        "classes": 100,
        "cache": "native",
    }
    path = wf.config(config, "tiny.yaml")
    target = "results/tiny/data/cifar100_1k/train.npz"
    wf.snakemake("-c1", target, "--configfile", str(path))
    train = np.load(wf.root / target)
    x, y = cifar["train"]
    assert train["images"].shape == (9, 32, 32, 3)
    np.testing.assert_array_equal(train["images"], x[cifar["small"][:9]])
    np.testing.assert_array_equal(train["labels"], y[cifar["small"][:9]])
    meta = read_json(wf.root / "results/tiny/data/cifar100_1k/manifest.json", schema="manifest")
    assert meta["sizes"]["train800.txt"] == 9 and meta["sizes"]["test.txt"] == N_TEST
    # A list that is not the one the config pins is refused by the rule, naming it.
    config["manyshot_lists"]["sha256"]["cifar100/cifar100-1k-trainval_combined.npy"] = "0" * 64
    path = wf.config(config, "tiny.yaml")
    failed = wf.snakemake("-c1", "--forceall", target, "--configfile", str(path), check=False)
    assert failed.returncode != 0
    log = (wf.root / "resources/lists/petl_vision/cifar100-1k.log").read_text()
    assert "cifar100-1k-trainval_combined.npy" in log and "0" * 64 in log
