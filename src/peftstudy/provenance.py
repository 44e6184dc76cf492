"""Provenance of a result: code version and hash, config hash, packages, data and weight checksums."""

from __future__ import annotations

import hashlib
import platform
import socket
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

from peftstudy.io import sha256_file

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGES = ("peftstudy", "torch", "timm", "numpy", "safetensors")


@cache
def code_hash() -> str:
    """sha256 over the package's Python sources (path + content), independent of git."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
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


def record(*, config_hash: str, data_manifest: str | Path, backbone_sha256: str | None) -> dict:
    return {
        "code_version": code_version(),
        "code_hash": code_hash(),
        "config_hash": config_hash,
        "packages": {name: _version(name) for name in PACKAGES},
        "data_manifest_sha256": sha256_file(data_manifest),
        "backbone_sha256": backbone_sha256,
        "host": socket.gethostname(),
        "python": platform.python_version(),
    }
