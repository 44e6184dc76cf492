"""Many-shot datasets (issue 5, docs/protocol.md §D.2): CIFAR-100 and RESISC45 subsets in the processed-VTAB layout.

The subsets are the authors' own (OSU-MLB/PETL_Vision at commit 245d262, `data/annotations/`): CIFAR-100 index
files (.npy, positions in torchvision's 50,000-image train set) and RESISC45 lists (`<class>/<file>.jpg label`).
Each subset (and fold, for the small ones tuned on five folds) becomes a folder in the layout of
:mod:`peftstudy.data.layout`: train800.txt = the tuning train split, val200.txt = the tuning val split,
train800val200.txt = the authors' combined list (what the final run trains on), test.txt = the full test set;
the names stay VTAB's whatever the sizes.

Images: CIFAR-100 as PNG (lossless), `images/train/NNNNNN.png` numbered by the position in the train set the
index files refer to, `images/test/NNNNNN.png` likewise; RESISC45 as the original JPEG bytes (no re-encoding),
`images/train/NNNNNN.jpg` numbered by the line of the authors' pool list `train.txt`, `images/test/` by
`test.txt`. Every list is checked against its pinned sha256 before it is read.

Archives (the config's `archives`, fetched and extracted by the generic rules): CIFAR-100 is torchvision's
https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, sha256
85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7 (as pinned by keras.datasets.cifar100; md5
eb9058c3a382ffc7106e4002c42a8d85 as in torchvision). NWPU-RESISC45 has no stable public URL with a published
checksum (its authors distribute a .rar), so its archive (a zip or tar of NWPU-RESISC45/<class>/*.jpg) is pinned
in the config once fetched.
"""

from __future__ import annotations

import io
import pickle
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy._core.multiarray import _reconstruct  # what pickled arrays are rebuilt with (numpy 2 name)

from peftstudy.data.fetch import archive_record, download, progress
from peftstudy.data.layout import SPLIT_LISTS, index, read_list, sha256_bytes, write_lists
from peftstudy.io import atomic_dir
from peftstudy.plan.specs import Options
from peftstudy.plan.stage_specs import ManyshotListsSpec, ManyshotSpec
from peftstudy.plan.tasks import MANYSHOT_CLASSES as CLASSES
from peftstudy.plan.tasks import MANYSHOT_FOLDED as FOLDED
from peftstudy.plan.tasks import MANYSHOT_FOLDS as FOLDS
from peftstudy.plan.tasks import check_subset
from peftstudy.tables import sha256sums

COMMIT = "245d2628754fa25bc56bdcbd7e63f0a4ac2eaaed"  # OSU-MLB/PETL_Vision 245d262, the code the study reran
BASE_URL = f"https://raw.githubusercontent.com/OSU-MLB/PETL_Vision/{COMMIT}/data/annotations/"

# Every split list the commit holds (cifar100/ and resisc/ under data/annotations/) and its sha256, computed from
# the authors' files at that commit (all of them are there, none is a Git LFS pointer), in sha256sum's format:
# `cd data/annotations && sha256sum -c` checks a checkout against it. Fetched from BASE_URL + path into
# `<lists dir>/<path>`.
LISTS: dict[str, str] = sha256sums("petl_vision_lists.sha256")


def subset_lists(dataset: str, subset: str, fold: int) -> dict[str, str]:
    """The authors' files (keys of LISTS) one subset and fold is built from: layout list name -> file, plus
    RESISC45's pools (`pool:train`, `pool:test`), which number its images."""
    check_subset(dataset, subset, fold)
    if dataset == "cifar100":
        # The 500 subset's split files hold all five folds as rows of one 2-D array.
        stem = f"cifar100/cifar100-{subset}-trainval"
        return {
            "train800.txt": f"{stem}_split_train.npy",
            "val200.txt": f"{stem}_split_val.npy",
            "train800val200.txt": f"{stem}_combined.npy",
        }
    suffix = f"_{fold}" if (dataset, subset) in FOLDED else ""
    stem = f"resisc/resisc-{subset}"
    return {
        "train800.txt": f"{stem}_train{suffix}.txt",
        "val200.txt": f"{stem}_val{suffix}.txt",
        "train800val200.txt": f"{stem}_combine.txt",
        "pool:train": "resisc/train.txt",
        "pool:test": "resisc/test.txt",
    }


def subset_files(dataset: str, subset: str) -> list[str]:
    """Every file a subset needs, all folds together: what to fetch for it."""
    folds = range(FOLDS if (dataset, subset) in FOLDED else 1)
    return sorted({key for fold in folds for key in subset_lists(dataset, subset, fold).values()})


def fetch_lists(
    dataset: str, subset: str, dest: str | Path, base_url: str = BASE_URL, pins: Mapping[str, str] = LISTS
) -> None:
    """Download a subset's lists into `dest/<key>`, each checked against its pinned sha256."""
    for key in subset_files(dataset, subset):
        download(base_url + key, Path(dest) / key, pins[key])


def read_pinned(lists_dir: Path, key: str, pins: Mapping[str, str]) -> bytes:
    """One of the authors' files, refused unless its sha256 is the pinned one."""
    path = lists_dir / key
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; fetch the lists first (snakemake {lists_dir}: rule manyshot_lists)")
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if actual != pins[key]:
        raise ValueError(
            f"{path}: sha256 {actual}, expected {pins[key]} (the authors' file at {COMMIT[:7]}): the copy is "
            f"corrupt, truncated or another version; delete it and fetch it again from {BASE_URL}{key}"
        )
    return data


def load_indices(data: bytes, path: Path, fold: int, size: int) -> np.ndarray:
    """A CIFAR-100 index file's positions in the `size`-image train set; a 2-D file holds one fold per row."""
    try:
        indices = np.load(io.BytesIO(data), allow_pickle=False)  # an index file never needs objects
    except ValueError as err:
        raise ValueError(f"{path}: not a numpy index array ({err})") from err
    if indices.dtype.kind not in "iu" or indices.ndim not in (1, 2):
        raise ValueError(f"{path}: {indices.dtype} array of shape {indices.shape}, not integer indices")
    if indices.ndim == 2:
        if not 0 <= fold < len(indices):
            raise ValueError(f"{path}: {len(indices)} folds, no fold {fold}")
        indices = indices[fold]
    bad = indices[(indices < 0) | (indices >= size)]
    if bad.size:
        raise ValueError(
            f"{path}: indices {bad[:5].tolist()} outside the {size}-image train set: --source is not "
            "CIFAR-100's python version (cifar-100-python/train), or an incomplete copy of it"
        )
    return indices.astype(np.int64)


# The only globals CIFAR's python batches (Python 2 cPickle, protocol 2) name: numpy's array reconstruction.
# The files say numpy.core (numpy 1); numpy 2 calls it numpy._core. Mapping names to objects here, rather than
# importing what a file names, is what keeps a malicious pickle from calling anything else.
_BATCH_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _BATCH_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch") from None


def parse_batch(data: bytes, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and fine labels (N,) of one CIFAR-100 python batch (`train` or `test`)."""
    try:
        # encoding="bytes": Python 2 str -> bytes, as the dataset's page loads them (keys b'data', ...).
        batch = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: refused ({err}): not a CIFAR-100 python batch; fetch and extract cifar-100-python.tar.gz again"
        ) from err
    pixels = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"fine_labels") if isinstance(batch, dict) else None
    if not (
        isinstance(pixels, np.ndarray)
        and pixels.dtype == np.uint8
        and pixels.ndim == 2
        and pixels.shape[1] == 3 * 32 * 32
        and isinstance(labels, list)
        and len(labels) == len(pixels)
    ):
        raise ValueError(f"{path}: no b'data' (N, 3072) uint8 array with N b'fine_labels'; not a CIFAR-100 batch")
    # Rows are 1024 red, 1024 green, 1024 blue values, each plane row-major.
    return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels, dtype=np.int64)


def cifar100_folder(
    source: Path, lists_dir: Path, subset: str, fold: int, pins: Mapping[str, str]
) -> tuple[dict[str, list[tuple[str, int]]], list[tuple[str, np.ndarray | Path]]]:
    """The four lists and the images (relative path, pixels) of a CIFAR-100 subset's folder."""
    files = subset_lists("cifar100", subset, fold)
    raw = {name: read_pinned(lists_dir, key, pins) for name, key in files.items()}  # before the slow part
    root = source / "cifar-100-python" if (source / "cifar-100-python").is_dir() else source
    batches = {}
    for pool in ("train", "test"):
        path = root / pool
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing; --source must be the folder cifar-100-python.tar.gz was extracted into"
            )
        batches[pool] = parse_batch(path.read_bytes(), path)
    (train_x, train_y), (test_x, test_y) = batches["train"], batches["test"]
    # The full subset's combined file is a permutation of all 50,000: the same set the authors' loader takes.
    picks = {name: load_indices(data, lists_dir / files[name], fold, len(train_y)) for name, data in raw.items()}
    picks_test = np.arange(len(test_y))
    rows = {name: [(f"images/train/{i:06d}.png", int(train_y[i])) for i in idx] for name, idx in picks.items()}
    rows["test.txt"] = [(f"images/test/{i:06d}.png", int(test_y[i])) for i in picks_test]
    used = np.unique(np.concatenate(list(picks.values())))
    images = [(f"images/train/{i:06d}.png", train_x[i]) for i in used]
    images += [(f"images/test/{i:06d}.png", test_x[i]) for i in picks_test]
    return rows, images


def renumber(
    rows: list[tuple[str, int]], pool: list[tuple[str, int]], folder: str, path: Path, pool_path: Path
) -> list[tuple[str, int]]:
    """A RESISC45 list's rows as layout rows: each image by its line in the authors' pool list."""
    where = {rel: (i, label) for i, (rel, label) in enumerate(pool)}
    out = []
    for n, (rel, label) in enumerate(rows, 1):
        if rel not in where:
            raise ValueError(f"{path}: line {n} names {rel}, which the pool list {pool_path} does not hold")
        i, pool_label = where[rel]
        if label != pool_label:
            raise ValueError(f"{path}: line {n} labels {rel} {label}, the pool list {pool_path} {pool_label}")
        out.append((f"images/{folder}/{i:06d}{Path(rel).suffix}", label))
    return out


def resisc45_folder(
    source: Path, lists_dir: Path, subset: str, fold: int, pins: Mapping[str, str]
) -> tuple[dict[str, list[tuple[str, int]]], list[tuple[str, np.ndarray | Path]]]:
    """The four lists and the images (relative path, original file) of a RESISC45 subset's folder."""
    files = subset_lists("resisc45", subset, fold)
    parsed = {}
    for name, key in files.items():
        read_pinned(lists_dir, key, pins)
        parsed[name] = read_list(lists_dir / key)
    root = source / "NWPU-RESISC45" if (source / "NWPU-RESISC45").is_dir() else source
    # Only the images the folder will hold must exist (the train pool only numbers them).
    for name, key in files.items():
        missing = [rel for rel, _ in parsed[name] if name != "pool:train" and not (root / rel).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{lists_dir / key}: names {len(missing)} images not in {root}, e.g. {root / missing[0]}: --source "
                "must be the folder the NWPU-RESISC45 archive was extracted into (one folder per class); "
                "extract the archive again if it is incomplete"
            )
    pools = {folder: parsed.pop(f"pool:{folder}") for folder in ("train", "test")}
    pool_paths = {folder: lists_dir / files[f"pool:{folder}"] for folder in pools}
    rows = {
        name: renumber(parsed[name], pools["train"], "train", lists_dir / files[name], pool_paths["train"])
        for name in parsed
    }
    rows["test.txt"] = renumber(pools["test"], pools["test"], "test", pool_paths["test"], pool_paths["test"])
    originals = {
        folder: {f"images/{folder}/{i:06d}{Path(rel).suffix}": root / rel for i, (rel, _) in enumerate(pool)}
        for folder, pool in pools.items()
    }
    used = sorted({rel for name in parsed for rel, _ in rows[name]})
    images: list[tuple[str, np.ndarray | Path]] = [(rel, originals["train"][rel]) for rel in used]
    images += [(rel, originals["test"][rel]) for rel, _ in rows["test.txt"]]
    return rows, images


def write_folder(
    out: Path, rows: dict[str, list[tuple[str, int]]], images: list[tuple[str, np.ndarray | Path]], label: str
) -> None:
    """The folder, atomically: PNGs from pixels, files copied byte for byte, then the four lists."""
    from PIL import Image

    with atomic_dir(out) as tmp:
        for folder in {rel.rsplit("/", 1)[0] for rel, _ in images}:
            (tmp / folder).mkdir(parents=True)
        for rel, image in progress(images, f"{label}: images", len(images)):
            if isinstance(image, Path):
                shutil.copyfile(image, tmp / rel)
            else:
                Image.fromarray(image).save(tmp / rel)
        write_lists(tmp, {name: [f"{rel} {label}" for rel, label in rows[name]] for name in SPLIT_LISTS.values()})


def build(
    dataset: str,
    subset: str,
    fold: int,
    source: str | Path,
    lists_dir: str | Path,
    out: str | Path,
    manifest: str | Path,
    name: str = "",
    archive: Mapping[str, Any] | None = None,
    pins: Mapping[str, str] = LISTS,
) -> None:
    """One subset and fold in the processed-VTAB layout at `out`, and its manifest."""
    source, lists_dir, out = Path(source), Path(lists_dir), Path(out)
    check_subset(dataset, subset, fold)
    make = cifar100_folder if dataset == "cifar100" else resisc45_folder
    name = name or f"{dataset}-{subset}" + (f"-fold{fold}" if (dataset, subset) in FOLDED else "")
    rows, images = make(source, lists_dir, subset, fold, pins)
    write_folder(out, rows, images, name)
    used = subset_lists(dataset, subset, fold).values()
    about = {"source": "manyshot", "subset": subset, "fold": fold, "commit": COMMIT}
    about["lists"] = {key: pins[key] for key in used}
    about.update(archive or {})  # the archive's sha256 (and whether it was pinned)
    # index() checks what training relies on (labels in range, every listed image present) and writes the
    # manifest with the lists' sha256, as for any folder in the layout.
    index(out, name, CLASSES[dataset], about, manifest)


def pins_with(overrides: Mapping[str, str] | None) -> dict[str, str]:
    """The pinned sums, with the config's own for lists it replaces (`manyshot_lists.sha256`)."""
    unknown = sorted(set(overrides or {}) - set(LISTS))
    if unknown:
        raise ValueError(f"manyshot_lists.sha256: {unknown[:3]} are not files of the authors' lists ({BASE_URL})")
    return {**LISTS, **(overrides or {})}


def run(spec: ManyshotSpec, options: Options) -> None:
    """`peftstudy run` of a manyshot spec."""
    build(
        spec.kind,
        spec.subset,
        spec.fold,
        spec.archive,
        spec.lists,
        spec.source,
        spec.manifest,
        spec.name,
        archive_record(spec.checksum),
        pins=pins_with(spec.pins),
    )


def run_lists(spec: ManyshotListsSpec, options: Options) -> None:
    """`peftstudy run` of a manyshot-lists spec."""
    fetch_lists(spec.kind, spec.subset, spec.lists, spec.base_url or BASE_URL, pins=pins_with(spec.pins))
