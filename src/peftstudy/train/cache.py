"""Finished tune results kept per grid point, so a tune job whose pack changed trains only its new points.

A tune job's pack (plan.study.packs) changes when a grid point is added to it or removed from it, and Snakemake
then reruns the job. Each point's result is kept in the run's resume folder as `tune-<gp>.json`, with the point's
:class:`~peftstudy.plan.depends.Dependencies` (settings, the digests of the data, weights and head files, the
code digest, the device and precision that ran, torch and timm) and a sha256 of the entry's own content. A point
is reused, provenance included, only when every field of its dependencies is equal; otherwise the log names the
fields that differ (`tune-<gp>.json: not reused: backbone weights differ (267b2e… -> bca4af…)`) and it is trained
again. An entry that is truncated, unparsable, does not match its digest or is not one of ours is set aside
(`tune-<gp>.json.corrupt`, named in the log) and the point retrained. Delete the folder's tune-*.json to retrain
regardless.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftstudy.io import set_aside, write_json
from peftstudy.plan.depends import Dependencies
from peftstudy.plan.specs import GridPoint

FORMAT = "peftstudy-tune-point/2"


def _digest(dependencies: dict[str, Any], metrics: dict[str, Any]) -> str:
    text = json.dumps({"dependencies": dependencies, "metrics": metrics}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class TuneResults:
    """The kept points of one resume folder; `dependencies` gives a grid point's record."""

    def __init__(self, folder: str | Path, dependencies: Callable[[GridPoint], Dependencies]) -> None:
        self.folder = Path(folder)
        self.dependencies = dependencies

    def _path(self, gp: str) -> Path:
        return self.folder / f"tune-{gp}.json"

    def get(self, point: GridPoint) -> dict[str, Any] | None:
        """The point's metrics from an earlier job with equal dependencies, else None (the reason logged)."""
        path = self._path(point.gp)
        if not path.exists():
            return None
        try:
            kept = json.loads(path.read_bytes())
            if not isinstance(kept, dict) or kept.get("format") != FORMAT:
                raise ValueError("not a tune result of this peftstudy")
            if _digest(kept["dependencies"], kept["metrics"]) != kept["sha256"]:
                raise ValueError("its content does not match its sha256")
            earlier = Dependencies.from_dict(kept["dependencies"])
        except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
            set_aside(path, f"unreadable ({error})")
            return None
        differences = self.dependencies(point).differences(earlier)
        if differences:
            print(f"{path}: not reused: {'; '.join(differences)}", file=sys.stderr, flush=True)
            return None
        return kept["metrics"]

    def put(self, point: GridPoint, metrics: dict[str, Any]) -> None:
        dependencies = self.dependencies(point).as_dict()
        entry = {"format": FORMAT, "dependencies": dependencies, "metrics": metrics}
        write_json(self._path(point.gp), dict(entry, sha256=_digest(dependencies, metrics)))
