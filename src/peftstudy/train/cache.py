"""Finished tune results kept per grid point, so a tune job whose pack changed trains only its new points.

A tune job's pack (plan.study.packs) changes when a grid point is added to it or removed from it, and Snakemake
then reruns the job. Each point's result is kept in the run's resume folder under the key of everything it is a
function of: its settings (method, grid point, recipe, backbone, seed), the device asked for, the training data
(sha256 of the train and val caches) and the code a run executes (provenance.training_code_hash). A point whose
key matches is reused as it was written, provenance included; any change to those trains it again. Delete the
folder's tune-*.json to retrain regardless.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from peftstudy.io import read_json, sha256_file, write_json
from peftstudy.plan.study import config_hash
from peftstudy.provenance import training_code_hash


class TuneResults:
    def __init__(self, args: argparse.Namespace) -> None:
        self.folder = Path(args.resume_dir)
        self.common = {
            "phase": "tune",
            "method": args.method,
            "recipe": args.recipe,
            "backbone": args.backbone,
            "seed": args.seed,
            "device": args.device,
            "data": {"train": sha256_file(args.train), "val": sha256_file(args.val)},
            "code": training_code_hash(args.method),
        }

    def _path(self, gp: str) -> Path:
        return self.folder / f"tune-{gp}.json"

    def _key(self, point: dict[str, Any]) -> str:
        return config_hash(dict(self.common, gp=point["gp"], hp=point["hp"]))

    def get(self, point: dict[str, Any]) -> dict[str, Any] | None:
        """The point's metrics from an earlier job with the same key, else None."""
        path = self._path(point["gp"])
        if not path.exists():
            return None
        kept = read_json(path)
        return kept["metrics"] if kept.get("key") == self._key(point) else None

    def put(self, point: dict[str, Any], metrics: dict[str, Any]) -> None:
        write_json(self._path(point["gp"]), {"key": self._key(point), "metrics": metrics})
