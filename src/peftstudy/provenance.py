"""Provenance of a result: code version and hash, config hash, packages, data and weight checksums, and which
of its inputs were downloaded without a pinned sha256 (the config's `allow_unpinned: true`)."""

from __future__ import annotations

import hashlib
import json
import platform
import socket
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

from peftstudy import methods  # settings modules only: no torch
from peftstudy.io import read_json, sha256_file

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGES = ("peftstudy", "torch", "timm", "numpy", "safetensors")


@cache
def code_hash() -> str:
    """sha256 over the package's Python sources (path + content), independent of git."""
    return _sources_hash(sorted(PACKAGE_DIR.rglob("*.py")))


@cache
def training_code_hash(method: str) -> str:
    """sha256 over the code a run of `method` executes: the engine, models, shared layers and the method's own
    modules (not the other methods', the report's or the data stage's, whose edits cannot change the run)."""
    shared = [
        *sorted((PACKAGE_DIR / "train").glob("*.py")),
        *sorted((PACKAGE_DIR / "models").glob("*.py")),
        PACKAGE_DIR / "methods" / "__init__.py",
        *sorted((PACKAGE_DIR / "methods" / "modules").glob("_*.py")),
        PACKAGE_DIR / "io.py",
    ]
    return _sources_hash([*shared, *methods.source_files(method)])


def _sources_hash(paths: list[Path]) -> str:
    """sha256 over package files: each one's path in the package, then its content."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@cache
def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=PACKAGE_DIR,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def unpinned_inputs(data_manifest: str | Path, backbone_weights: str | Path | None) -> list[str]:
    """The downloads behind a result that no pinned sha256 checked: the dataset's archive (its manifest says
    so, from the fetch's checksum file) and the backbone's weights (their metadata says so, from fetch-backbone).
    """
    found = []
    manifest = read_json(data_manifest)
    spec = manifest.get("spec", {})
    if spec.get("unpinned"):  # index and manyshot manifests; only the former know the archive's URL
        where = f" from {spec['url']}" if "url" in spec else ""
        found.append(f"data {manifest['dataset']}: archive{where}, sha256 {spec['sha256']}")
    if backbone_weights:
        from safetensors import safe_open

        with safe_open(str(backbone_weights), "np") as weights:
            about = json.loads((weights.metadata() or {}).get("peftstudy", "{}"))
        if about.get("pinned") is False:
            found.append(f"backbone {backbone_weights}: from {about['source']}, sha256 {about['source_sha256']}")
    return found


def record(
    *,
    config_hash: str,
    data_manifest: str | Path,
    backbone_sha256: str | None,
    backbone_weights: str | Path | None = None,
) -> dict:
    return {
        "code_version": code_version(),
        "code_hash": code_hash(),
        "config_hash": config_hash,
        "packages": {name: _version(name) for name in PACKAGES},
        "data_manifest_sha256": sha256_file(data_manifest),
        "backbone_sha256": backbone_sha256,
        "unpinned": unpinned_inputs(data_manifest, backbone_weights),
        "host": socket.gethostname(),
        "python": platform.python_version(),
    }
