"""Epoch-boundary checkpoints, so that a preempted or killed run resumes instead of starting over.

A checkpoint holds what the next epoch depends on: the trained tensors, the optimizer's state, the
batch-order generator, torch's RNG (drop-path, dropout, augmentation), the epoch and the result so far. A run
resumed from it ends with the same weights and metrics as one never interrupted (tested bitwise on the CPU).
It carries the run's key (the hash of its settings), so a changed run never resumes from a stale file.
SIGTERM (Slurm's preemption and time limit) sets a flag; the loop stops after the training step under way
and exits with status 143 (well within Slurm's KillWait of 30 s), and the job's retry or requeue resumes from
the last epoch boundary, replaying the steps since: the same bytes as a run never interrupted.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from peftstudy.io import atomic_path

PREEMPTED_STATUS = 143  # 128 + SIGTERM, what a shell reports for a job that SIGTERM ended


class Preempted(SystemExit):
    def __init__(self, path: Path) -> None:
        super().__init__(PREEMPTED_STATUS)
        self.path = path


@dataclasses.dataclass
class Checkpoint:
    path: Path
    key: str

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none or it belongs to other settings."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("key") != self.key:
            print(f"{self.path}: saved by a run with other settings; starting afresh", file=sys.stderr, flush=True)
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Written beside the target and renamed, so a kill mid-write leaves the previous checkpoint; a failed
        write leaves no temporary file and names the checkpoint and the cause (a full disk)."""
        # Through a Python file: torch then reports a write error as the OSError it was, not by a C++ position.
        with atomic_path(self.path) as tmp, open(tmp, "wb") as handle:
            torch.save(dict(state, key=self.key), handle)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


# What :func:`sigterm_flag` yields: `stop` once SIGTERM came; the training loop counts its `steps`, and the
# handler notes the count it came at (`signalled_at`), so the log can say how many steps stopping took.
NO_SIGNAL = {"stop": False, "steps": 0, "signalled_at": 0}


@contextmanager
def sigterm_flag() -> Iterator[dict[str, int]]:
    """While active, SIGTERM sets flag["stop"] instead of ending the process."""
    flag = dict(NO_SIGNAL)

    def handler(signum: int, frame: object) -> None:
        print("SIGTERM: stopping after this training step", file=sys.stderr, flush=True)
        flag["stop"], flag["signalled_at"] = True, flag["steps"]

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
