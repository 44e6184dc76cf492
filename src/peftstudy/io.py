"""Atomic writes and schema checks: every result file appears whole or not at all."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "workflow" / "schemas"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _os_cause(error: BaseException) -> OSError | None:
    """The OSError behind `error`: itself, or one it was raised from or during (torch's writer turns a full
    disk into an `inline_container` RuntimeError whose context is the OSError)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _says_disk_full(error: BaseException, folder: Path) -> bool:
    """For writers that keep no OSError (safetensors words it, torch's path writer drops it): the message, or
    the free space."""
    if any(os.strerror(code) in str(error) for code in FULL_ERRNOS):
        return True
    try:
        return shutil.disk_usage(folder).free == 0
    except OSError:
        return False


def _disk_full_error(error: Exception, path: Path) -> OSError | None:
    """The OSError to raise when writing `path` failed for a full disk (or quota), naming the file; else None
    (any other error stays as it was: the block may have failed at something other than writing)."""
    cause = _os_cause(error)
    if (cause is not None and cause.errno in FULL_ERRNOS) or _says_disk_full(error, path.parent):
        code = cause.errno if cause is not None and cause.errno in FULL_ERRNOS else errno.ENOSPC
        return OSError(code, f"could not write {path}: disk full ({os.strerror(code)}); free space under {path.parent}")
    return None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary file is removed in every case. A write that fails for a full disk (or quota) raises an
    OSError naming `path` and the cause, whatever library was writing: torch, safetensors and numpy each
    report it in their own words, or not at all.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results should be readable like any other file
        yield Path(tmp)
        os.replace(tmp, path)
    except Exception as error:
        full = _disk_full_error(error, path)
        if full is None:
            raise
        raise full from error
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
    except Exception as error:
        full = _disk_full_error(error, path)
        if full is None:
            raise
        raise full from error
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def set_aside(path: str | Path, reason: str) -> Path:
    """Move a kept file that cannot be trusted (truncated, unparsable, its digest not its content, or not one of
    ours) out of the way as `<name>.corrupt`, replacing an earlier one, and say so naming it: the job goes on
    without it (retrains) instead of failing on it at every rerun."""
    path = Path(path)
    aside = path.with_name(f"{path.name}.corrupt")
    os.replace(path, aside)
    print(f"{path}: {reason}; set aside as {aside.name}, training afresh", file=sys.stderr, flush=True)
    return aside


def sha256_file(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (weights can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@cache
def _schemas() -> dict[str, Any]:
    """Every workflow/schemas/*.schema.yaml by file name, read once per process (robustness checks four kinds of
    file), with libyaml's parser where PyYAML has it: the same documents ~8x faster than the pure-Python
    parser, which matters in jobs that are many and short."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return {path.name: yaml.load(path.read_text(), Loader=loader) for path in SCHEMA_DIR.glob("*.schema.yaml")}


@cache
def _validator(schema: str):
    """A validator of workflow/schemas/<schema>.schema.yaml; `$ref: other.schema.yaml` resolves in that folder."""
    import jsonschema
    from referencing import Registry, Resource

    specs = _schemas()
    registry = Registry().with_resources((name, Resource.from_contents(spec)) for name, spec in specs.items())
    return jsonschema.Draft202012Validator(specs[f"{schema}.schema.yaml"], registry=registry)


def _key_path(parts: Iterable[Any]) -> str:
    """experiments.vtab.grid.lr[0], as a user would point at it in the YAML."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    return text or "(top level)"


def _problems(error: Any) -> list[tuple[int, str]]:
    """One violation as (rank, line): the key path first, then what is wrong; unknown keys (rank 0) come with
    the closest allowed one, since a misspelt key also makes the key it meant go missing."""
    import difflib

    if error.validator in ("oneOf", "anyOf") and error.context:
        # Every alternative failed: say what each wanted (its own description included).
        options = dict.fromkeys(line.partition(": ")[2] for e in error.context for _, line in _problems(e))
        return [(1, f"{_key_path(error.absolute_path)}: {' or '.join(options)}")]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        lines = []
        for key in sorted(set(error.instance) - set(allowed)):
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            where = _key_path([*error.absolute_path, key])
            lines.append((0, f"{where}: unknown key{hint}; allowed: {', '.join(allowed)}"))
        if lines:
            return lines
    about = error.schema.get("description") if isinstance(error.schema, dict) else None
    leaf = error.validator not in ("required", "additionalProperties")
    about = f" — {' '.join(about.split())}" if about and leaf else ""
    return [(1, f"{_key_path(error.absolute_path)}: {error.message}{about}")]


def schema_problems(obj: Any, schema: str) -> list[str]:
    """Every violation of workflow/schemas/<schema>.schema.yaml, one line each, unknown keys first."""
    found = [p for error in _validator(schema).iter_errors(obj) for p in _problems(error)]
    return [line for _, line in sorted(set(found))]


def validate(obj: Any, schema: str) -> None:
    """Raise ValueError naming the first violation of workflow/schemas/<schema>.schema.yaml."""
    problems = schema_problems(obj, schema)
    if problems:
        raise ValueError(f"{schema} file invalid at {problems[0]}")


def non_finite(obj: Any, parts: tuple[Any, ...] = ()) -> list[str]:
    """Every NaN or infinity in `obj`, by key path: YAML reads `.nan` and `.inf` as numbers, which the schema's
    ranges let through (NaN compares false) and which no result file can hold (JSON has neither)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [f"{_key_path(parts)}: {obj} is not a finite number; give a finite value"]
    if isinstance(obj, dict):
        return [line for key, value in obj.items() for line in non_finite(value, (*parts, key))]
    if isinstance(obj, list):
        return [line for i, value in enumerate(obj) for line in non_finite(value, (*parts, i))]
    return []


def validate_config(config: Any) -> None:
    """The study config against config.schema.yaml, every problem on its own line with its key path first
    (snakemake.utils.validate prints the whole schema, the location last), non-finite numbers first."""
    problems = non_finite(config) + schema_problems(config, "config")
    if problems:
        more = f"\n({len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError("config: " + "\nconfig: ".join(problems[:3]) + more)


def write_json(path: str | Path, obj: Any, schema: str | None = None) -> None:
    if schema is not None:
        validate(obj, schema)
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)


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
