"""The data sources (`datasets.<name>.source`): one module per source, which registers it; all imported here.

A source module defines a :class:`~peftstudy.plan.sources.base.Source` subclass: its dataset keys and checks, its
job's spec, where that job runs and its resources, its provenance record, its training-set sizes for the estimate
and its doctor checks; and registers an instance (`register(...)`, as a method module does). The config's checks
(plan.study), the estimate (plan.cost), the doctor, the data jobs (plan.stages.data) and the generic data rules
(workflow/rules/data.smk) ask this registry, so a new source is its module, its test and its name in the import
line below (a static import: plan.depends follows it). Standard library only, like the whole planning package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# One name per source: importing its module registers it.
from peftstudy.plan.sources import archive, local, manual, manyshot, synthetic, tfds  # noqa: F401
from peftstudy.plan.sources.base import SOURCES, ConfigError, Source

# Dataset keys of every source (the report's, the cache's, the sizes a synthetic set renders and the estimate
# reads, tuning folds, a shifted test set's classes); a source's own keys are its `required` and `optional`.
COMMON_KEYS = frozenset(
    {"source", "classes", "group", "size_of", "cache", "train", "val", "test", "folds", "class_subset"}
)


def names() -> list[str]:
    return list(SOURCES)


def of(entry: Mapping[str, Any]) -> Source:
    """The source of a dataset's entry (its `source` checked by :func:`check` first)."""
    return SOURCES[entry["source"]]


def check(name: str, entry: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """`datasets.<name>`: a known source, the keys it needs, no key of another source or of none; then the
    source's own checks. ConfigError names the key and what is allowed."""
    source = SOURCES.get(entry["source"])
    if source is None:
        raise ConfigError(
            f"datasets.{name}.source: unknown source {entry['source']!r}; known: {', '.join(sorted(SOURCES))}"
        )
    missing = sorted(source.required - set(entry))
    if missing:
        raise ConfigError(f"datasets.{name}: source {source.name} needs {', '.join(missing)}")
    own = source.required | source.optional | COMMON_KEYS
    others = {key for s in SOURCES.values() if s is not source for key in s.required | s.optional}
    foreign = sorted(set(entry) & others - own)
    if foreign:
        raise ConfigError(f"datasets.{name}: {', '.join(foreign)} belongs to another source than {source.name}")
    unknown = sorted(set(entry) - own)
    if unknown:
        raise ConfigError(
            f"datasets.{name}: unknown key(s) {', '.join(unknown)}; source {source.name} takes "
            f"{', '.join(sorted(source.required | source.optional)) or 'no keys of its own'} besides "
            f"{', '.join(sorted(COMMON_KEYS))}"
        )
    source.check(name, entry, config)
