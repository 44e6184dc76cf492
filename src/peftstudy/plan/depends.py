"""What a training run's result depends on, defined once (docs/architecture.md §4).

A run's :class:`Dependencies` are the content digests of every file it reads (its data caches and manifest, the
backbone's weights and CLIP's zero-shot head, pinned or not), its settings, a digest of the package source it
imports, the device type and precision that ran, and the torch and timm versions. The one record is used three
ways:

- written into every result as its provenance (`provenance.dependencies` of a metrics.json);
- keying every reuse inside a job: a tune point trained earlier (train.cache) and an epoch checkpoint
  (train.resume) are reused only when every field is equal, and the log names the fields that differ;
- giving the job's Snakemake inputs (the files) and params (the code digest, the settings), so that Snakemake
  reruns a job when something it depends on changed and the job's own reuse then agrees.

The cost of a code edit is an explicit choice: the code dependency is a digest over the *normalised* source of
every package module a run imports (the syntax tree without docstrings, so comments, docstrings and formatting
change nothing), not the files' bytes or times. Editing `train/engine.py` in a way that changes its code makes
every training job stale (a params change for Snakemake, a different key for the job's reuse); a comment or
docstring edit makes none stale. There is deliberately no switch to declare an edit harmless: a result is a
function of its code, and the report (report.tables.mixed_table) flags an experiment whose results still came
from different code, weights, data or precision (after `--rerun-triggers mtime`, say).

Which modules a method's run imports is found statically (:func:`run_sources`, following `import` statements from
the training entry points), torch-free, so Snakemake can use it at DAG time; tests/test_depends.py checks it
against the modules a real run of each method has loaded. The device and precision that will run and the torch
and timm versions are known only inside the job: they key its reuse, not Snakemake's staleness.

Standard library only, like the whole planning package.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from peftstudy import methods
from peftstudy.io import atomic_path, sha256_file

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `peftstudy` package
PACKAGE = "peftstudy"
# Where a training job starts: the command line, and the runs module it calls (each method's own modules are
# imported by name at run time, methods.get and Method.inject: added per method, from methods.source_files).
ENTRY_MODULES = ("peftstudy.cli", "peftstudy.train.runs")
# Digests of data and weights files, by path, size, mtime and ctime (a file swapped in place with its mtime kept
# still has a new ctime): a 330 MB ViT-B/16 is hashed once, not by every job. Override with PEFTSTUDY_DIGESTS.
DIGEST_CACHE_ENV = "PEFTSTUDY_DIGESTS"


# Files.


def _digest_cache() -> Path:
    if DIGEST_CACHE_ENV in os.environ:
        return Path(os.environ[DIGEST_CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peftstudy" / "digests"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's content, hashed again only when its size, mtime or ctime changed since it was last
    hashed (by this process or any other sharing the digest cache)."""
    resolved = Path(path).resolve()
    stat = os.stat(resolved)
    return _cached_sha256(str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


@functools.cache
def _cached_sha256(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    stamp = {"path": path, "size": size, "mtime_ns": mtime_ns, "ctime_ns": ctime_ns, "inode": inode}
    entry = _digest_cache() / f"{hashlib.sha256(path.encode()).hexdigest()[:32]}.json"
    try:
        kept = json.loads(entry.read_text())
        if {k: kept.get(k) for k in stamp} == stamp and isinstance(kept.get("sha256"), str):
            return kept["sha256"]
    except (OSError, ValueError):
        pass  # none yet, or unreadable: hashed below
    digest = sha256_file(path)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(entry) as tmp:
            tmp.write_text(json.dumps(dict(stamp, sha256=digest)))
    except OSError:
        pass  # a read-only cache (a shared install): the digest is still right, only not kept
    return digest


def verified_sha256(path: str | Path, expected: str | None, what: str, config_key: str) -> str:
    """A file's sha256, checked against the config's pinned sum when there is one (ValueError naming the file)."""
    actual = file_sha256(path)
    if expected is not None and actual != expected:
        raise ValueError(
            f"{what} {path}: sha256 is {actual}, expected {expected}. The file is corrupt or not the one the config "
            f"names: restore it, or remake it and update {config_key}."
        )
    return actual


# Code.


def _module_file(name: str) -> Path | None:
    """The source file of a package module (a package's __init__.py), or None when there is none."""
    base = SOURCE_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _imports(name: str) -> frozenset[str]:
    """The package modules a module imports anywhere in its body (functions' lazy imports included), and the
    packages holding it (importing a module runs its packages' __init__ first)."""
    path = _module_file(name)
    packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}  # `peftstudy` has no file
    found: set[str] = set()
    if path is None:
        return frozenset(packages)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package up
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return frozenset(packages | {m for m in found if m.split(".")[0] == PACKAGE and _module_file(m) is not None})


@functools.cache
def run_modules(method: str) -> tuple[str, ...]:
    """Every package module a tune or final run of `method` may import, sorted: the closure of the entry modules'
    and the method's own modules' imports."""
    own = [
        ".".join(path.resolve().relative_to(SOURCE_ROOT).with_suffix("").parts) for path in methods.source_files(method)
    ]
    todo = [*ENTRY_MODULES, *own]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_imports(name) - seen)
    return tuple(sorted(seen))


def run_sources(method: str) -> list[Path]:
    """The source files of :func:`run_modules`."""
    return [path for name in run_modules(method) if (path := _module_file(name)) is not None]


def _drop_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.cache
def _module_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a module's code without what cannot change a result: its syntax tree with comments (which the
    parser drops), docstrings and layout gone."""
    tree = _drop_docstrings(ast.parse(Path(path).read_text(), path))
    return hashlib.sha256(ast.dump(tree, annotate_fields=False, include_attributes=False).encode()).hexdigest()[:16]


def source_digests(paths: Iterable[Path]) -> dict[str, str]:
    """Each package module's path in the package -> the digest of its normalised code."""
    found = {}
    for path in sorted(paths):
        stat = path.stat()
        found[path.relative_to(SOURCE_ROOT / PACKAGE).as_posix()] = _module_digest(
            str(path), stat.st_size, stat.st_mtime_ns
        )
    return found


def source_digest(paths: Iterable[Path]) -> str:
    """One digest over :func:`source_digests`."""
    text = json.dumps(source_digests(paths), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_digest(method: str) -> str:
    """The code dependency of a run of `method`: :func:`source_digest` of :func:`run_sources`."""
    return source_digest(run_sources(method))


# The record.

# How a log line says that a field differs.
DIFFER = {
    "settings": "settings differ",
    "data": "data differ",
    "backbone_weights": "backbone weights differ",
    "zero_shot_head": "zero-shot head differs",
    "code": "code differs",
    "device": "device differs",
    "precision": "precision differs",
    "torch": "torch version differs",
    "timm": "timm version differs",
}


def _short(value: Any) -> str:
    text = "none" if value is None else str(value)
    return f"{text[:6]}…" if len(text) > 12 and all(c in "0123456789abcdef" for c in text) else text


@dataclasses.dataclass(frozen=True)
class Dependencies:
    """Everything one training run's result is a function of; two runs with equal records give the same result.

    `settings`: method, phase, grid point and its hyper-parameters, recipe, backbone (arch, head kept), seed.
    `data`: role (train, val or test, manifest) -> sha256 of the file read. `backbone_weights`, `zero_shot_head`:
    sha256 of those files (None: none read). `code`: :func:`code_digest`. `device`, `precision`: what ran
    (`cpu`/`cuda`, `fp32`/`bf16`), never `auto`. `torch`, `timm`: the versions that ran.
    """

    settings: Mapping[str, Any]
    data: Mapping[str, str]
    backbone_weights: str | None
    zero_shot_head: str | None
    code: str
    device: str
    precision: str
    torch: str
    timm: str

    def as_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Dependencies:
        """A record as :meth:`as_dict` wrote it; KeyError or TypeError for anything else."""
        names = {f.name for f in dataclasses.fields(cls)}
        if set(record) != names:
            raise KeyError(f"fields {sorted(set(record) ^ names)}")
        return cls(**record)

    @property
    def key(self) -> str:
        """sha256 of the whole record (canonical JSON)."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def differences(self, earlier: Dependencies) -> list[str]:
        """What differs from an earlier record, a phrase per field: `backbone weights differ (267b2e… -> bca4af…)`,
        `data differ (train: 1f3a09… -> 77c2d1…)`, `settings differ (hp, recipe)`, `code differs (…)`."""
        found = []
        for field in dataclasses.fields(self):
            old, new = getattr(earlier, field.name), getattr(self, field.name)
            if _plain(old) == _plain(new):
                continue
            if isinstance(old, Mapping) and isinstance(new, Mapping):
                keys = sorted(k for k in set(old) | set(new) if _plain(old.get(k)) != _plain(new.get(k)))
                if field.name == "settings":
                    detail = ", ".join(keys)
                else:
                    detail = ", ".join(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys)
            else:
                detail = f"{_short(old)} -> {_short(new)}"
            found.append(f"{DIFFER[field.name]} ({detail})")
        return found


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples as lists, mappings as dicts), so a record read back compares equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def settings(
    method: str,
    phase: str,
    gp: str,
    hp: Mapping[str, Any],
    recipe: Mapping[str, Any],
    backbone: Mapping[str, Any],
    seed: int,
) -> dict[str, Any]:
    """A run's settings: its backbone by architecture and whether its head is kept; the backbone's files count by
    their content (the record's `backbone_weights` and `zero_shot_head`), not by their paths or the config's sums."""
    kept = {k: v for k, v in backbone.items() if k not in ("weights", "sha256", "head", "head_sha256")}
    return {
        "method": method,
        "phase": phase,
        "gp": gp,
        "hp": dict(hp),
        "recipe": dict(recipe),
        "backbone": kept,
        "seed": seed,
    }
