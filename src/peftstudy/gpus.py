"""One GPU per job on a machine without a scheduler that assigns them (a workstation, Snakemake's local executor).

`snakemake --resources gpu=N` bounds how many GPU jobs run at once but tells none of them which device to use,
so each would open cuda:0. A job that will train on CUDA therefore claims a device before CUDA starts in its
process: it takes an exclusive, non-blocking `flock` on that device's lock file in a folder every job of the
machine shares, keeps the file open for the rest of its life, and sets CUDA_VISIBLE_DEVICES to the device.
The kernel drops a flock when the last descriptor of its file closes, so a device comes back however its job
ends: exit, exception, SIGTERM or kill -9. Nothing has to be cleaned up, and no stale lock can outlive its job.

A job claims nothing when CUDA_VISIBLE_DEVICES is already set (Slurm sets it for a GPU allocation, and a user
who sets it has chosen), when it runs on the CPU or on a device given by number (`cuda:1`), or when the machine
has no NVIDIA GPU. Devices are found with `nvidia-smi -L` (the driver's own list; CUDA is not initialised, so
the CUDA_VISIBLE_DEVICES set afterwards still counts) and named by UUID: a MIG instance by its own UUID, so a
MIG-split GPU's instances are claimed one by one.

When every device is held the job waits, checking every POLL_SECONDS and saying every PROGRESS_SECONDS who holds
them, up to PEFTSTUDY_GPU_WAIT seconds (default a day), then fails naming them. It waits rather than fails
because a busy device is the normal case of `--resources gpu=N` with N above the devices free (another study,
another user's job): the job is queued, not broken, and a failure would only be retried later by hand. `0`
fails at once.

Settings (environment variables, as they belong to the machine, not to a study):
    PEFTSTUDY_GPU_LOCKS     the lock folder (default /tmp/peftstudy-gpu-locks: machine-wide, every user's jobs)
    PEFTSTUDY_GPU_WAIT      seconds to wait for a free device (default 86400; 0: fail at once)
    PEFTSTUDY_SIMULATE_GPUS N simulated devices for tests: claimed like real ones, CUDA_VISIBLE_DEVICES left
                            alone, so the job runs on the CPU
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

LOCKS_VAR, WAIT_VAR, SIMULATE_VAR = "PEFTSTUDY_GPU_LOCKS", "PEFTSTUDY_GPU_WAIT", "PEFTSTUDY_SIMULATE_GPUS"
DEFAULT_LOCKS = "/tmp/peftstudy-gpu-locks"
DEFAULT_WAIT_SECONDS = 86400.0
POLL_SECONDS = 1.0
PROGRESS_SECONDS = 60.0

_GPU_LINE = re.compile(r"^GPU (\d+):.*\(UUID: (GPU-[^)]+)\)")
_MIG_LINE = re.compile(r"^\s+MIG .*\(UUID: (MIG-[^)]+)\)")


@dataclass(frozen=True)
class Claim:
    """A device this process holds: its UUID (or simulated name), where it is in the machine's list, the open
    lock file (kept open, never closed: the kernel releases the lock when the process ends)."""

    device: str
    index: int
    count: int
    lock: Path
    fd: int


_held: Claim | None = None  # one claim per process: the job's


def parse_devices(listing: str) -> list[str]:
    """The CUDA devices in `nvidia-smi -L` output, as CUDA_VISIBLE_DEVICES takes them: each GPU's UUID, or the
    UUIDs of its MIG instances where it is split (CUDA sees only the instances then)."""
    devices: list[str] = []
    gpu = None
    for line in listing.splitlines():
        if match := _GPU_LINE.match(line):
            gpu = match.group(2)
            devices.append(gpu)
        elif (match := _MIG_LINE.match(line)) and gpu is not None:
            if devices and devices[-1] == gpu:
                devices.pop()
            devices.append(match.group(1))
    return devices


def machine_devices(environ: MutableMapping[str, str]) -> list[str]:
    """This machine's devices (simulated ones with PEFTSTUDY_SIMULATE_GPUS); none without nvidia-smi."""
    simulated = environ.get(SIMULATE_VAR, "")
    if simulated:
        if not simulated.isdigit():
            raise ValueError(f"{SIMULATE_VAR}={simulated!r}: give a number of devices, e.g. {SIMULATE_VAR}=4")
        return [f"simulated{i}" for i in range(int(simulated))]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    if listing.returncode != 0:
        say(f"nvidia-smi -L failed ({listing.stderr.strip() or listing.returncode}): no GPU claimed")
        return []
    return parse_devices(listing.stdout)


def say(line: str) -> None:
    print(f"gpus: {line}", file=sys.stderr, flush=True)


def claim(environ: MutableMapping[str, str] = os.environ) -> Claim | None:
    """Claim a free device for a job that is to run on CUDA (`--device cuda`, or `auto` with a CUDA build of
    torch: the caller decides) unless its devices were chosen already; see the module. Call it before anything
    initialises CUDA. Returns the claim (the same on a second call), or None where the job claims nothing."""
    global _held
    if _held is not None:
        return _held
    if "CUDA_VISIBLE_DEVICES" in environ:
        return None
    devices = machine_devices(environ)
    if not devices:
        return None
    folder = Path(environ.get(LOCKS_VAR) or DEFAULT_LOCKS)
    wait = _seconds(environ.get(WAIT_VAR, ""), DEFAULT_WAIT_SECONDS)
    _held = _take(devices, folder, wait)
    if SIMULATE_VAR not in environ:
        environ["CUDA_VISIBLE_DEVICES"] = _held.device
    say(
        f"claimed device {_held.index} of {_held.count} ({_held.device}; lock {_held.lock}); "
        f"CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES', '(simulated: not set)')}"
    )
    return _held


def _seconds(text: str, default: float) -> float:
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{WAIT_VAR}={text!r}: give seconds to wait for a free GPU (0: fail at once)") from None


def _take(devices: list[str], folder: Path, wait: float) -> Claim:
    """Lock the first free device, waiting up to `wait` seconds for one."""
    _make_shared_folder(folder)
    start = time.monotonic()
    reported: float | None = None
    while True:
        for index, device in enumerate(devices):
            lock = folder / f"{device}.lock"
            fd = _open_lock(lock)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            _note_holder(fd)
            return Claim(device, index, len(devices), lock, fd)
        waited = time.monotonic() - start
        holders = "; ".join(f"{i} ({d}): {_holder(folder / f'{d}.lock')}" for i, d in enumerate(devices))
        if waited >= wait:
            raise RuntimeError(
                f"no free GPU after {waited:.0f} s: all {len(devices)} are held by jobs that claimed them in "
                f"{folder} ({holders}). Run fewer GPU jobs at once (snakemake --resources gpu=N, N at most the "
                f"GPUs free), wait for those jobs, or raise {WAIT_VAR} (now {wait:g} s)"
            )
        if reported is None or time.monotonic() - reported >= PROGRESS_SECONDS:
            reported = time.monotonic()
            say(f"waiting for a free GPU ({waited:.0f} s of {wait:g} s, {WAIT_VAR}): all held: {holders}")
        time.sleep(POLL_SECONDS)


def _make_shared_folder(folder: Path) -> None:
    """The lock folder, writable by every user of the machine (sticky, like /tmp) when this process makes it."""
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return
    os.chmod(folder, 0o1777)


def _open_lock(lock: Path) -> int:
    """The lock file, opened for writing where it can be (to note the holder), else read-only: flock needs
    no write access, so a file another user made still serves."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(lock, os.O_RDONLY)
    with contextlib.suppress(PermissionError):  # another user's file: shared already
        os.fchmod(fd, 0o666)  # against the umask, for the machine's other users
    return fd


def _note_holder(fd: int) -> None:
    """Write who holds the lock into its file, for the messages of jobs that wait (best effort)."""
    holder = f"pid {os.getpid()} on {os.uname().nodename}: {' '.join(sys.argv)[:200]}\n".encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder, 0)
    except OSError:
        pass  # opened read-only: the lock holds regardless


def _holder(lock: Path) -> str:
    try:
        return lock.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def release() -> None:
    """Give the claimed device back before the process ends (the kernel does it at exit): for a process that
    claims more than once, as the tests do."""
    global _held
    if _held is not None:
        os.close(_held.fd)
        _held = None
