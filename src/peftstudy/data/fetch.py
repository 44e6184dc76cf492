"""Fetching: resumable, checksummed downloads and safe archive extraction (issue 5).

Everything the paper-scale studies read from outside (archives, split lists, weights) comes through
:func:`download`, run by Snakemake localrules into `resources/` (login nodes have the internet, compute
nodes often not). A download goes to `<dest>.part` and resumes from there (HTTP Range) after an
interruption; only a file whose sha256 matches is renamed to `dest`. A file with no pinned sha256 is
refused (with the sum to pin) unless the config says `allow_unpinned: true`; then its checksum file says so,
and so does the provenance of every result that uses it. :func:`extract` unpacks into a temporary folder
beside the destination and renames it into place, refusing members that would land outside it and archives
that would unpack to more than a limit or than the free space.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from peftstudy.io import atomic_dir, atomic_path, sha256_file

CHUNK = 1 << 20
# What an archive may unpack to unless its config entry says otherwise (`archives.<name>.max_unpacked_gb`): the
# processed VTAB-1K is a few GB, CIFAR-100 and RESISC45 under 1 GB; a zip bomb is far more.
DEFAULT_MAX_UNPACKED_GB = 50.0
# The second line of a checksum file whose download had no pinned sum (accepted under `allow_unpinned: true`);
# the first line stays in sha256sum's format.
UNPINNED_MARK = "# unpinned: accepted under allow_unpinned: true"
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


def is_local(source: str) -> bool:
    """A local path or file:// URL, as `download` fetches it (not over the network)."""
    return "://" not in source or source.startswith("file://")


def _range_start(response) -> int | None:
    """Where the bytes of a 206 response start, by its Content-Range (None when it has none that parses)."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", response.headers.get("Content-Range", "").strip())
    return int(match[1]) if match else None


def _fetch_http(url: str, part: Path, timeout: float) -> None:
    """Append the rest of `url` to `part` (resuming at its size), or restart it if the server does not resume
    exactly there: a 200 to the ranged request, or a 206 from another offset, would splice two files."""
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
        if response.status == 206 and _range_start(response) != have:
            got = response.headers.get("Content-Range")
            if not have:
                raise FetchError(f"{url}: answered {got!r} to a request for the whole file; check the URL")
            print(f"{url}: asked for bytes {have}-, got {got!r}; restarting", file=sys.stderr, flush=True)
            part.unlink()
            return _fetch_http(url, part, timeout)  # without a Range: the answer is a 200 or refused above
        resumed = response.status == 206
        if have and not resumed:
            print(f"{url}: the server does not resume; restarting", file=sys.stderr, flush=True)
            have = 0
        length = response.headers.get("Content-Length")
        total = (int(length) + have) if length else None
        done = have
        start, last = time.monotonic(), [0.0]
        with open(part, "ab" if resumed else "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                _progress(part.name.removesuffix(".part"), done, total, start, last)
    if total is not None and done < total:
        raise FetchError(f"{url}: the connection closed after {done} of {total} bytes; run again to resume")


def download(
    source: str,
    dest: str | Path,
    sha256: str | None,
    *,
    allow_unpinned: bool = False,
    config_key: str = "",
    timeout: float = 60.0,
) -> str:
    """Fetch `source` (http(s) URL, file:// URL or local path) to `dest`, verified; returns the file's sha256.

    With `sha256` None the download is refused with the sum to pin under `<config_key>.sha256` (kept as the
    part file, so the run after pinning fetches nothing), unless `allow_unpinned`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if is_local(source):
        path = Path(source.removeprefix("file://"))
        if not path.is_file():
            raise FetchError(f"{path}: no such file; put it there or correct the path in the config")
        shutil.copyfile(path, part)
    elif source.startswith(("http://", "https://")):
        _fetch_http(source, part, timeout)
    else:
        raise FetchError(f"{source}: only http(s)://, file:// and local paths are fetched")
    actual = sha256_file(part)
    key = f"{config_key}.sha256" if config_key else "sha256"
    if sha256 is not None and actual != sha256:
        part.unlink()
        raise FetchError(
            f"{dest.name}: sha256 {actual}, expected {sha256}. The file from {source} is corrupt, truncated or "
            f"not the one the config names; the partial file was removed: run again to fetch it afresh, or fix "
            f"the URL or {key} in the config."
        )
    if sha256 is None and not allow_unpinned:
        raise FetchError(
            f"{dest.name}: no sha256 pinned for {source}; it downloaded with sha256 {actual}. If that is the "
            f"file you mean, pin it in the config:\n    {key}: {actual}\nand run again (the download is kept "
            f"as {part}, not fetched again). To use unpinned files anyway, set `allow_unpinned: true` at the "
            "top of the config: every result that uses one then records it in its provenance."
        )
    if sha256 is None:
        print(f"{dest.name}: sha256 {actual}, NOT PINNED (allow_unpinned: true)", file=sys.stderr, flush=True)
    os.replace(part, dest)
    return actual


def write_checksum(path: str | Path, sha256: str, name: str, pinned: bool) -> None:
    """`<sha256>  <name>` (sha256sum's format), and a second line when the sum was not pinned."""
    with atomic_path(path) as tmp:
        tmp.write_text(f"{sha256}  {name}\n" + ("" if pinned else UNPINNED_MARK + "\n"))


def archive_record(checksum_file: str | Path) -> dict[str, Any]:
    """What a dataset's manifest (and so every result's provenance) records of the archive it came from, from
    the checksum file :func:`write_checksum` wrote: its sha256, and `unpinned: true` if it was not pinned."""
    lines = Path(checksum_file).read_text().splitlines()
    return {"sha256": lines[0].split()[0], **({"unpinned": True} if UNPINNED_MARK in lines[1:] else {})}


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name)  # `./` (what `tar -C dir .` starts with) has no parts at all
    drive = bool(path.parts) and ":" in path.parts[0]
    if path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\")) or drive:
        raise FetchError(f"{archive}: member {name!r} would be written outside the extraction folder; refused")
    return path


def _check_room(archive: Path, dest: Path, unpacked: int, max_bytes: int, config_key: str) -> None:
    """Refuse an archive that would unpack to more than `max_bytes` or than the free space at `dest`."""
    free = shutil.disk_usage(dest.parent).free
    if unpacked <= max_bytes and unpacked <= free:
        return
    key = f"{config_key}.max_unpacked_gb" if config_key else "the archive's max_unpacked_gb"
    raise FetchError(
        f"{archive}: unpacks to {unpacked / 1e6:.1f} MB, against a limit of {max_bytes / 1e6:.1f} MB ({key} in "
        f"the config) and {free / 1e6:.1f} MB free on {dest.parent}; nothing was unpacked. If the archive is "
        f"the one you mean, raise {key} or free some space."
    )


def _unpack(archive: Path, dest: Path, tmp: Path, max_bytes: int, config_key: str) -> None:
    """Unpack a zip or tar `archive` (checked to be one) into `tmp`, the temporary folder of `dest`."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _safe_name(info.filename, archive)
            # The sizes the archive declares bound what extraction writes (zipfile stops at file_size).
            _check_room(archive, dest, sum(info.file_size for info in infos), max_bytes, config_key)
            zf.extractall(tmp)
    else:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()  # reads the whole archive: a truncated one fails here, before writing
            for member in members:
                _safe_name(member.name, archive)
                if not (member.isfile() or member.isdir()):
                    raise FetchError(f"{archive}: member {member.name!r} is a link or device; refused")
            _check_room(archive, dest, sum(member.size for member in members), max_bytes, config_key)
            tf.extractall(tmp, members=members, filter="data")


def extract(
    archive: str | Path,
    dest: str | Path,
    *,
    max_bytes: int = int(DEFAULT_MAX_UNPACKED_GB * 1e9),
    config_key: str = "",
) -> None:
    """Unpack a tar(.gz/.bz2/.xz) or zip archive into `dest` atomically; unsafe members are an error.

    Absolute paths, `..` components, links (which could point anywhere) and archives unpacking to more than
    `max_bytes` or than the free space are refused before anything is written; the archive is unpacked into a
    temporary folder beside `dest` and renamed into place, so a failure leaves no half-extracted `dest`. A
    truncated or corrupt archive is removed (the rule that fetched it then runs again), and the error says so.
    """
    archive, dest = Path(archive), Path(dest)
    if not (zipfile.is_zipfile(archive) or tarfile.is_tarfile(archive)):
        raise _damaged(archive, "neither a tar nor a zip archive", config_key)
    try:
        with atomic_dir(dest) as tmp:
            _unpack(archive, dest, tmp, max_bytes, config_key)
    except (EOFError, tarfile.ReadError, zipfile.BadZipFile, zlib.error) as err:
        raise _damaged(archive, str(err), config_key) from err


def _damaged(archive: Path, reason: str, config_key: str) -> FetchError:
    """Remove a truncated or corrupt archive (so the fetch rule runs again) and say so: else every rerun fails
    the same way on the same file."""
    archive.unlink(missing_ok=True)
    return FetchError(
        f"{archive}: truncated or corrupt ({reason}); it was removed: run again to fetch it afresh. If it fails "
        f"the same way, the file at its URL ({config_key or 'archives.<name>'}.url in the config) is damaged: "
        "download it again, and pin its sha256."
    )


def run_fetch(args) -> None:
    """`peftstudy fetch`: the file, and its sha256 beside it (what the datasets' manifests record)."""
    pinned = args.sha256 != "none"
    actual = download(
        args.url,
        args.out,
        args.sha256 if pinned else None,
        allow_unpinned=args.allow_unpinned,
        config_key=args.config_key,
    )
    write_checksum(args.out_checksum, actual, Path(args.out).name, pinned)


def run_extract(args) -> None:
    """`peftstudy extract`."""
    max_gb = DEFAULT_MAX_UNPACKED_GB if args.max_unpacked_gb is None else args.max_unpacked_gb
    extract(args.archive, args.out, max_bytes=int(max_gb * 1e9), config_key=args.config_key)
