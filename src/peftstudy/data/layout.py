"""The processed-VTAB on-disk layout and the prepared tensor cache.

A source directory holds ``images/<pool>/NNNNNN.png`` (``.jpg`` when built from TFDS, as in the processed
archive) and four lists, ``relative_path label`` per line, named as in VTAB-1K whatever their size:
``train800.txt``, ``val200.txt``, ``train800val200.txt`` and ``test.txt``. Its ``manifest.json``, written
beside the folder, records the sha256 of every list. ``prepare`` decodes one list once into a ``.npz`` cache
of uint8 images (N, H, W, 3) and int64 labels that training reads whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from peftstudy.data.fetch import archive_record
from peftstudy.io import atomic_dir, read_json, save_npz, write_json
from peftstudy.plan.specs import Options
from peftstudy.plan.stage_specs import IndexSpec, PrepareSpec

# Cache split name -> VTAB-1K list file.
SPLIT_LISTS = {"train": "train800.txt", "val": "val200.txt", "trainval": "train800val200.txt", "test": "test.txt"}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_pool(root: Path, pool: str, examples: Iterable[tuple[np.ndarray, int]], ext: str = "png") -> list[str]:
    """Encode each (uint8 image, label) as ``images/<pool>/NNNNNN.<ext>`` under `root`, with PIL's defaults
    for that format (JPEG quality 75, as the processed-VTAB archive was written); their list lines, in order."""
    from PIL import Image

    (root / "images" / pool).mkdir(parents=True)
    lines = []
    for i, (img, label) in enumerate(examples):
        rel = f"images/{pool}/{i:06d}.{ext}"
        Image.fromarray(img).save(root / rel)
        lines.append(f"{rel} {label}")
    return lines


def write_lists(root: Path, lists: Mapping[str, list[str]]) -> tuple[dict[str, str], dict[str, int]]:
    """Write the four lists into `root`; train800val200.txt, when not given, is train800 then val200 (as in
    VTAB-1K). The sha256 and size of each list, for the manifest."""
    lists = {"train800val200.txt": [*lists["train800.txt"], *lists["val200.txt"]], **lists}
    checksums, sizes = {}, {}
    for name in SPLIT_LISTS.values():
        data = "".join(line + "\n" for line in lists[name]).encode()
        (root / name).write_bytes(data)
        checksums[name], sizes[name] = sha256_bytes(data), len(lists[name])
    return checksums, sizes


def write_source(
    out_dir: str | Path,
    pool: tuple[np.ndarray, np.ndarray],
    n_train: int,
    n_val: int,
    test: tuple[np.ndarray, np.ndarray],
    info: dict,
    manifest_path: str | Path,
) -> None:
    """Write a train pool (first n_train = train800, next n_val = val200) and a test set in the layout."""
    with atomic_dir(out_dir) as tmp:
        train = write_pool(tmp, "train", zip(*pool, strict=True))
        lists = {
            "train800.txt": train[:n_train],
            "val200.txt": train[n_train : n_train + n_val],
            "test.txt": write_pool(tmp, "test", zip(*test, strict=True)),
        }
        checksums, sizes = write_lists(tmp, lists)
    write_json(manifest_path, dict(info, lists=checksums, sizes=sizes), schema="manifest")


def read_list(path: str | Path) -> list[tuple[str, int]]:
    """A split list: (relative image path, label) per line."""
    return [(rel, int(label)) for rel, label in (line.split() for line in Path(path).read_text().splitlines() if line)]


def decode(path: str | Path, image_size: int) -> np.ndarray:
    """One image file as uint8 (H, W, 3) RGB at image_size x image_size: PIL bicubic, the authors' resize.

    `image_size` 0 keeps the native size (for recipes that crop and resize on the device).
    """
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if image_size and img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.BICUBIC)
        return np.asarray(img)


def prepare(source_dir: str | Path, manifest_path: str | Path, split: str, out: str | Path, image_size: int) -> None:
    """Decode the images of one split's list into a uint8 cache, resized to `image_size` (bicubic) if needed,
    or at their native size with `image_size` 0."""
    source_dir = Path(source_dir)
    list_path = source_dir / SPLIT_LISTS[split]
    if not list_path.exists():
        raise FileNotFoundError(f"{list_path}: missing; the source is not in the processed-VTAB layout")
    raw = list_path.read_bytes()
    manifest = read_json(manifest_path, schema="manifest")
    expected = manifest["lists"][list_path.name]
    if sha256_bytes(raw) != expected:
        raise ValueError(
            f"{list_path}: sha256 {sha256_bytes(raw)} differs from the manifest's {expected}; regenerate it"
        )
    rows = [line.split() for line in raw.decode().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{list_path}: the list is empty, so split {split!r} cannot be prepared")
    first = decode(source_dir / rows[0][0], image_size)
    images = np.empty((len(rows), *first.shape), dtype=np.uint8)
    for i, (rel, _) in enumerate(rows):
        pixels = decode(source_dir / rel, image_size)
        if pixels.shape != first.shape:
            raise ValueError(
                f"{source_dir / rel}: {pixels.shape[1]}x{pixels.shape[0]} pixels, the split's first image "
                f"{first.shape[1]}x{first.shape[0]}: a native-size cache needs one size; use cache: input"
            )
        images[i] = pixels
    labels = np.array([int(label) for _, label in rows], dtype=np.int64)
    save_npz(
        out, images=images, labels=labels, list_sha256=np.array(expected), num_classes=np.array(manifest["classes"])
    )


def index(source_dir: str | Path, dataset: str, classes: int, about: dict, out: str | Path) -> None:
    """The manifest of a folder already in the layout (from an archive or a local copy): the lists' sha256.

    Checks what training would otherwise trip over later: every list present, non-empty, its labels within
    the configured classes, its images present.
    """
    source_dir = Path(source_dir)
    lists, sizes = {}, {}
    for name in SPLIT_LISTS.values():
        path = source_dir / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing; {source_dir} is not in the processed-VTAB layout (images/ and "
                f"{', '.join(SPLIT_LISTS.values())}): check the dataset's folder in the config"
            )
        raw = path.read_bytes()
        rows = read_list(path)
        if not rows:
            raise ValueError(f"{path}: empty list")
        bad = sorted({label for _, label in rows if not 0 <= label < classes})
        if bad:
            raise ValueError(f"{path}: labels {bad[:5]} outside 0..{classes - 1}; check datasets.{dataset}.classes")
        missing = [rel for rel, _ in rows if not (source_dir / rel).is_file()]
        if missing:
            raise FileNotFoundError(f"{path}: {len(missing)} listed images are missing, e.g. {source_dir / missing[0]}")
        lists[name], sizes[name] = sha256_bytes(raw), len(rows)
    manifest = {"dataset": dataset, "source": about["source"], "classes": classes, "spec": about}
    write_json(out, dict(manifest, lists=lists, sizes=sizes), schema="manifest")


def run_index(spec: IndexSpec, options: Options) -> None:
    """`peftstudy run` of an index spec."""
    about = dict(spec.about)
    if spec.checksum:
        about.update(archive_record(spec.checksum))
    index(spec.folder, spec.dataset, spec.classes, about, spec.manifest)
    link_entries(spec.folder, spec.source)


def link_entries(folder: str | Path, out: str | Path) -> None:
    """`out` as a folder of links, one to each entry of `folder` (its images and lists): every data source's
    dataset ends as its own `source/` folder, which prepare reads, without copying a folder that already is in
    the layout. Links, not a link: removing `out` (Snakemake does before a rerun) never reaches into `folder`."""
    folder = Path(folder).absolute()
    with atomic_dir(out) as tmp:
        for entry in sorted(folder.iterdir()):
            (tmp / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())


def run(spec: PrepareSpec, options: Options) -> None:
    """`peftstudy run` of a prepare spec."""
    prepare(spec.source, spec.manifest, spec.split, spec.cache, spec.image_size)
