"""Atomic writes and schema checks: every result file appears whole or not at all."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "workflow" / "schemas"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results should be readable like any other file
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def sha256_file(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (weights can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@cache
def _validator(schema: str):
    """A validator of workflow/schemas/<schema>.schema.yaml; `$ref: other.schema.yaml` resolves in that folder."""
    import jsonschema
    import yaml
    from referencing import Registry, Resource

    specs = {path.name: yaml.safe_load(path.read_text()) for path in SCHEMA_DIR.glob("*.schema.yaml")}
    registry = Registry().with_resources((name, Resource.from_contents(spec)) for name, spec in specs.items())
    return jsonschema.Draft202012Validator(specs[f"{schema}.schema.yaml"], registry=registry)


def validate(obj: Any, schema: str) -> None:
    """Raise ValueError naming the first violation of workflow/schemas/<schema>.schema.yaml."""
    errors = sorted(_validator(schema).iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(map(str, errors[0].absolute_path)) or "(top level)"
        raise ValueError(f"{schema} file invalid at {where}: {errors[0].message}")


def write_json(path: str | Path, obj: Any, schema: str | None = None) -> None:
    if schema is not None:
        validate(obj, schema)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: str | Path, schema: str | None = None) -> Any:
    obj = json.loads(Path(path).read_text())
    if schema is not None:
        validate(obj, schema)
    return obj


def save_npz(path: str | Path, **arrays: Any) -> None:
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def load_npz(path: str | Path) -> dict[str, Any]:
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
