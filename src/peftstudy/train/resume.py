"""Epoch-boundary checkpoints, so that a preempted or killed run resumes instead of starting over.

A checkpoint holds what the next epoch depends on: the trained tensors, the optimizer's state, the
batch-order generator, torch's RNG (drop-path, dropout, augmentation), the epoch and the result so far. A run
resumed from it ends with the same weights and metrics as one never interrupted (tested bitwise on the CPU).
It carries the run's :class:`~peftstudy.plan.depends.Dependencies` (settings, data, weights, code, device,
precision, torch and timm), so a run resumes only from a checkpoint whose every field is equal (else the log names
the fields that differ and it starts afresh), and a sha256 of its own content: a truncated, corrupt or foreign
checkpoint is set aside (`<name>.corrupt`, named in the log) and the run starts afresh.
SIGTERM (Slurm's preemption and time limit) sets a flag; the loop stops after the training step under way
and exits with status 143 (well within Slurm's KillWait of 30 s), and the job's retry or requeue resumes from
the last epoch boundary, replaying the steps since: the same bytes as a run never interrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from peftstudy.io import atomic_path, set_aside
from peftstudy.plan.depends import Dependencies

PREEMPTED_STATUS = 143  # 128 + SIGTERM, what a shell reports for a job that SIGTERM ended


class Preempted(SystemExit):
    def __init__(self, path: Path) -> None:
        super().__init__(PREEMPTED_STATUS)
        self.path = path


# A checkpoint file: one line of JSON (FORMAT, the sha256 of the rest, the run's dependencies), then torch.save's
# bytes. The header is read without torch, and the digest tells a truncated or damaged file from a whole one.
FORMAT = "peftstudy-checkpoint/2"


def read(path: Path) -> tuple[Dependencies, dict[str, Any]]:
    """A checkpoint's dependencies and state; ValueError (or KeyError, TypeError) when it cannot be trusted."""
    header, _, body = path.read_bytes().partition(b"\n")
    about = json.loads(header)
    if not isinstance(about, dict) or about.get("format") != FORMAT:
        raise ValueError("not a checkpoint of this peftstudy")
    if hashlib.sha256(body).hexdigest() != about["sha256"]:
        raise ValueError("its content does not match its sha256 (truncated or damaged)")
    dependencies = Dependencies.from_dict(about["dependencies"])
    return dependencies, torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)


@dataclasses.dataclass
class Checkpoint:
    path: Path
    dependencies: Dependencies

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none, it belongs to a run with other dependencies, or it cannot
        be trusted (then set aside)."""
        if not self.path.exists():
            return None
        try:
            earlier, state = read(self.path)
        except (ValueError, KeyError, TypeError, RuntimeError, EOFError) as error:  # RuntimeError: torch's zip reader
            set_aside(self.path, f"unreadable ({str(error).splitlines()[0] if str(error) else type(error).__name__})")
            return None
        differences = self.dependencies.differences(earlier)
        if differences:
            print(f"{self.path}: not resumed: {'; '.join(differences)}; starting afresh", file=sys.stderr, flush=True)
            return None
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Written beside the target and renamed, so a kill mid-write leaves the previous checkpoint; a failed
        write leaves no temporary file and names the checkpoint and the cause (a full disk)."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        body = buffer.getbuffer()
        digest = hashlib.sha256(body).hexdigest()
        about = {"format": FORMAT, "sha256": digest, "dependencies": self.dependencies.as_dict()}
        # Through a Python file: a write error is then the OSError it was, which atomic_path names.
        with atomic_path(self.path) as tmp, open(tmp, "wb") as handle:
            handle.write(json.dumps(about, sort_keys=True).encode() + b"\n")
            handle.write(body)

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
