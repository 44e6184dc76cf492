"""Fetching: resumable, checksummed downloads and safe archive extraction (issue 5).

Everything the paper-scale studies read from outside (archives, split lists, weights) comes through
:func:`download`, run by Snakemake localrules into `resources/` (login nodes have the internet, compute
nodes often not). A download goes to `<dest>.part` and resumes from there (HTTP Range) after an
interruption; only a file whose sha256 matches is renamed to `dest`. :func:`extract` unpacks into a
temporary folder beside the destination and renames it into place, refusing members that would land
outside it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import TypeVar

from peftstudy.io import atomic_dir, sha256_file

CHUNK = 1 << 20
T = TypeVar("T")


class FetchError(RuntimeError):
    pass


def _due(last: list[float], finished: bool) -> bool:
    """Whether a progress line is due: every few seconds and at the end (job logs are files: no
    carriage-return bars, so no tqdm)."""
    now = time.monotonic()
    if now - last[0] < 5 and not finished:
        return False
    last[0] = now
    return True


def progress(items: Iterable[T], name: str, total: int) -> Iterator[T]:
    """`items`, with a line to stderr every few seconds saying how many of `total` are done."""
    last = [time.monotonic()]
    for done, item in enumerate(items, 1):
        yield item
        if _due(last, done >= total):
            print(f"{name}: {done}/{total} ({100 * done / max(total, 1):.0f}%)", file=sys.stderr, flush=True)


def _progress(name: str, done: int, total: int | None, start: float, last: list[float]) -> None:
    """A line to stderr every few seconds about a download."""
    if not _due(last, total is not None and done >= total):
        return
    now = time.monotonic()
    rate = done / max(now - start, 1e-9) / 1e6
    size = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB ({100 * done / total:.0f}%)" if total else f"{done / 1e6:.1f} MB"
    print(f"{name}: {size} at {rate:.1f} MB/s", file=sys.stderr, flush=True)


def _is_local(source: str) -> bool:
    return "://" not in source or source.startswith("file://")


def _fetch_http(url: str, part: Path, timeout: float) -> None:
    """Append the rest of `url` to `part` (resuming at its size), or restart it if the server cannot resume."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to fetch: the part is complete (the checksum decides)
            return
        raise FetchError(f"{url}: HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise FetchError(f"{url}: {err.reason}; check the URL and the network, or put the file there") from err
    with response:
        resumed = response.status == 206
        length = response.headers.get("Content-Length")
        total = (int(length) + (have if resumed else 0)) if length else None
        done = have if resumed else 0
        if have and not resumed:
            print(f"{url}: the server does not resume; restarting", file=sys.stderr, flush=True)
        start, last = time.monotonic(), [0.0]
        with open(part, "ab" if resumed else "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                _progress(part.name.removesuffix(".part"), done, total, start, last)
    if total is not None and done < total:
        raise FetchError(f"{url}: the connection closed after {done} of {total} bytes; run again to resume")


def download(source: str, dest: str | Path, sha256: str | None, *, timeout: float = 60.0) -> str:
    """Fetch `source` (http(s) URL, file:// URL or local path) to `dest`, verified; returns the file's sha256.

    With `sha256` None the file is accepted and its checksum printed, to be pinned in the config.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if _is_local(source):
        path = Path(source.removeprefix("file://"))
        if not path.is_file():
            raise FetchError(f"{path}: no such file; put it there or correct the path in the config")
        shutil.copyfile(path, part)
    elif source.startswith(("http://", "https://")):
        _fetch_http(source, part, timeout)
    else:
        raise FetchError(f"{source}: only http(s)://, file:// and local paths are fetched")
    actual = sha256_file(part)
    if sha256 is not None and actual != sha256:
        part.unlink()
        raise FetchError(
            f"{dest.name}: sha256 {actual}, expected {sha256}. The file from {source} is corrupt, truncated or "
            "not the one the config names; the partial file was removed: run again to fetch it afresh, or fix "
            "the URL or the sha256 in the config."
        )
    if sha256 is None:
        print(f"{dest.name}: sha256 {actual} (not pinned: add it to the config)", file=sys.stderr, flush=True)
    os.replace(part, dest)
    return actual


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\")) or ":" in path.parts[0]:
        raise FetchError(f"{archive}: member {name!r} would be written outside the extraction folder; refused")
    return path


def extract(archive: str | Path, dest: str | Path) -> None:
    """Unpack a tar(.gz/.bz2/.xz) or zip archive into `dest` atomically; unsafe members are an error.

    Absolute paths, `..` components and links (which could point anywhere) are refused before anything is
    written; the archive is unpacked into a temporary folder beside `dest` and renamed into place, so a failure
    leaves no half-extracted `dest`.
    """
    archive = Path(archive)
    with atomic_dir(dest) as tmp:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _safe_name(info.filename, archive)
                zf.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for member in members:
                    _safe_name(member.name, archive)
                    if not (member.isfile() or member.isdir()):
                        raise FetchError(f"{archive}: member {member.name!r} is a link or device; refused")
                tf.extractall(tmp, members=members, filter="data")
        else:
            raise FetchError(f"{archive}: neither a tar nor a zip archive (truncated?); delete it and fetch again")


def run_fetch(args) -> None:
    """`peftstudy fetch`: the file, and its sha256 beside it (what the datasets' manifests record)."""
    actual = download(args.url, args.out, None if args.sha256 == "none" else args.sha256)
    Path(args.out_checksum).write_text(f"{actual}  {Path(args.out).name}\n")


def run_extract(args) -> None:
    """`peftstudy extract`."""
    extract(args.archive, args.out)
