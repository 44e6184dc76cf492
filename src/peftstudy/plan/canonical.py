"""Settings as canonical text and its hashes: a grid point's id, a config's hash. Its own module, out of
plan.study, so that a training run (whose provenance hashes its settings) imports none of the config's checks:
a run's code digest (plan.depends) covers what it runs, and an edit of a check or of a data source reruns no
training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def normalise(value: Any) -> Any:
    """Numbers in one canonical form (an integral float becomes an int), so 1e-3 and 0.001 share an id."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return int(value) if float(value).is_integer() else float(value)


def canonical(obj: Any) -> str:
    """JSON with sorted keys, no spaces and normalised numbers: equal settings give equal text."""
    return json.dumps(canonical_value(obj), sort_keys=True, separators=(",", ":"))


def canonical_value(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: canonical_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [canonical_value(x) for x in v]
    return normalise(v)


def gp_id(hp: Mapping[str, Any]) -> str:
    """Short stable id of a grid point: sha1 of its canonical JSON, 8 hex digits."""
    return hashlib.sha1(canonical(hp).encode()).hexdigest()[:8]


def config_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]
