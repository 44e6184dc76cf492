"""Provenance of a result: what it depends on (plan.depends.Dependencies: the files' digests, settings, code,
device, precision, torch and timm), the code version, packages, and which of its inputs were downloaded without a
pinned sha256 (the config's `allow_unpinned: true`)."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

from peftstudy.io import read_json
from peftstudy.plan.canonical import config_hash
from peftstudy.plan.depends import Dependencies, run_sources, source_digests

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGES = ("peftstudy", "torch", "timm", "numpy", "safetensors")


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
    *, dependencies: Dependencies, data_manifest: str | Path, backbone_weights: str | Path | None = None
) -> dict:
    """A result's provenance: its dependencies whole, and the fields the tables read beside them."""
    return {
        "code_version": code_version(),
        "code_hash": dependencies.code,
        # The code digest's parts, module by module: the report compares them across an experiment's methods.
        "code_files": source_digests(run_sources(dependencies.settings["method"])),
        # The hash of the settings this run depends on, not of the whole study config: an unrelated edit elsewhere
        # in the config must not make a result look different (or rerun it).
        "config_hash": config_hash(dependencies.settings),
        "packages": {name: _version(name) for name in PACKAGES},
        "data_manifest_sha256": dependencies.data["manifest"],
        "backbone_sha256": dependencies.backbone_weights,
        "dependencies": dependencies.as_dict(),
        "unpinned": unpinned_inputs(data_manifest, backbone_weights),
        "host": socket.gethostname(),
        "python": platform.python_version(),
    }
