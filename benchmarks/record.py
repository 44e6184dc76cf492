r"""Record a benchmark: run a command N >= 3 times and keep its raw output, the machine and the spread.

Every figure the README or docs/scale.md quotes is the median of a file this writes under benchmarks/results/
(`<name>-<YYYY-MM-DD>.json`; `-2`, `-3`... when that day's exists: a record is never overwritten), holding

- the date (UTC), the command, the working directory's commit (and whether it had uncommitted changes);
- the machine: CPU model, cores online and usable by this process, platform, Python, the load average
  (1, 5, 15 min) before and after the whole record and before and after each repetition;
- each repetition's raw output (stdout and stderr, interleaved as printed), exit status, wall time and the CPU
  time (user + system) of the command and everything it waited for;
- every figure the command prints as `key=value` (a number, optionally followed by a unit such as `x`, `s` or
  `%`: `speedup=1.69x`, `snakemake_seconds=344`, `rate[lora/engine fp32]=1565`), those `--figure NAME=REGEX`
  picks out of what it prints otherwise (the regex's first group, at its last match), and the wall and CPU
  times, each with its values per repetition and their median, minimum and maximum.

A repetition that exits non-zero stops the record and writes nothing (its output is shown): a figure is never
taken from a failed run. `--setup` runs a shell command before each repetition, untimed (e.g. removing the
previous run's results, so each repetition starts clean). The load average is recorded, not controlled: a
record made on a busy machine says so, and its range shows it.

    python benchmarks/record.py dag_scale-mini -- python benchmarks/dag_scale.py --configfile config.yaml
    python benchmarks/record.py mini_study --setup 'rm -rf results/mini .snakemake' \
        --figure 'jobs=(\d+) of \d+ steps \(100%\) done' -- snakemake all
    python benchmarks/record.py --show benchmarks/results/mini_study-2026-12-06.json
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftstudy.io import read_json, write_json

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks/results"
MIN_REPEATS = 3
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# `key=value[unit]` as a whole word: `speedup=1.69x`, `rate[lora/engine fp32]=1,565`; not `n=800,` in a repr.
FIGURE = re.compile(
    r"(?<!\S)([A-Za-z_]\w*(?:\[[^\]=]*\])?)=(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?)([A-Za-z%]*)(?=\s|$)"
)


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (/proc/cpuinfo), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "cores_online": os.cpu_count(),
        "cores_usable": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def figures(output: str, picked: dict[str, re.Pattern] | None = None) -> dict[str, float]:
    """Every `key=value` the output prints, and each `picked` pattern's first group at its last match; a key
    printed twice keeps its last value (the final figure)."""
    found = {}
    for line in output.splitlines():
        for key, number, _unit in FIGURE.findall(line):
            found[key] = float(number.replace(",", ""))
    for name, pattern in (picked or {}).items():
        matches = pattern.findall(output)
        if matches:
            found[name] = float(str(matches[-1]).replace(",", ""))
    return found


def picked_figure(text: str) -> tuple[str, re.Pattern]:
    """--figure NAME=REGEX: the regex must have a group (the number)."""
    name, _, regex = text.partition("=")
    if not re.fullmatch(r"[A-Za-z_]\w*", name) or not regex:
        raise argparse.ArgumentTypeError(f"--figure {text!r}: NAME=REGEX, e.g. 'jobs=(\\d+) of \\d+ steps'")
    try:
        pattern = re.compile(regex, re.MULTILINE)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"--figure {text!r}: {error}") from None
    if pattern.groups < 1:
        raise argparse.ArgumentTypeError(f"--figure {text!r}: the regex needs a group around the number")
    return name, pattern


def spread(values: Sequence[float]) -> dict[str, Any]:
    return {
        "values": list(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def run_once(command: Sequence[str]) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = load()
    start = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "returncode": proc.returncode,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "load_before": load_before,
        "load_after": load(),
        "output": proc.stdout,
    }


def summarise(
    repetitions: Sequence[dict[str, Any]], picked: dict[str, re.Pattern] | None = None
) -> dict[str, dict[str, Any]]:
    """Each figure over the repetitions: the wall and CPU times, and every figure all of them printed."""
    printed = [figures(r["output"], picked) for r in repetitions]
    common = [key for key in printed[0] if all(key in p for p in printed)]
    summary = {"wall_s": spread([r["wall_s"] for r in repetitions]), "cpu_s": spread([r["cpu_s"] for r in repetitions])}
    summary.update({key: spread([p[key] for p in printed]) for key in common})
    return summary


def record_path(folder: Path, name: str, day: str) -> Path:
    """<folder>/<name>-<day>.json, or the first free `-<n>` after it: records are never overwritten."""
    path, n = folder / f"{name}-{day}.json", 1
    while path.exists():
        n += 1
        path = folder / f"{name}-{day}-{n}.json"
    return path


def show(record: dict[str, Any]) -> str:
    m = record["machine"]
    lines = [
        f"{record['name']}: {' '.join(record['command'])}",
        f"{record['date']}, commit {record['commit'] or 'unknown'}{' + uncommitted changes' * record['dirty']}",
        f"{m['cpu_model']}, {m['cores_usable']} of {m['cores_online']} cores; load average before "
        f"{record['load_before']}, after {record['load_after']}; {len(record['repetitions'])} repetitions",
        "| figure | median | min | max |",
        "|---|---|---|---|",
    ]
    lines += [f"| {key} | {s['median']:g} | {s['min']:g} | {s['max']:g} |" for key, s in record["figures"].items()]
    return "\n".join(lines)


def record(
    name: str,
    command: Sequence[str],
    repeat: int,
    setup: str | None,
    folder: Path = RESULTS,
    picked: dict[str, re.Pattern] | None = None,
) -> Path:
    if not NAME.match(name):
        raise SystemExit(f"record: name {name!r}: use letters, digits, '_', '.' and '-' (it names the file)")
    if repeat < MIN_REPEATS:
        raise SystemExit(f"record: --repeat {repeat}: at least {MIN_REPEATS} (a median and a range need them)")
    if not command:
        raise SystemExit("record: no command; give it after `--`, e.g. record.py NAME -- python bench.py")
    started = datetime.datetime.now(datetime.UTC)
    facts = {
        "name": name,
        "command": list(command),
        "setup": setup,
        "picked": {figure: pattern.pattern for figure, pattern in (picked or {}).items()},
        "cwd": os.getcwd(),
        "date": started.isoformat(timespec="seconds"),
        "commit": git("rev-parse", "HEAD"),  # the benchmarks' own checkout
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "machine": machine(),
        "load_before": load(),
    }
    repetitions = []
    for i in range(repeat):
        if setup:
            subprocess.run(setup, shell=True, check=True)
        rep = run_once(command)
        if rep["returncode"] != 0:
            sys.stdout.write(rep["output"][-8000:])
            raise SystemExit(
                f"record: repetition {i + 1} of {' '.join(command)} exited {rep['returncode']}: nothing recorded"
            )
        print(f"repetition {i + 1}/{repeat}: {rep['wall_s']:.1f} s wall, load {rep['load_before']}", flush=True)
        repetitions.append(rep)
    result = facts | {"load_after": load(), "repetitions": repetitions, "figures": summarise(repetitions, picked)}
    path = record_path(folder, name, started.date().isoformat())
    write_json(path, result)
    print(show(result))
    print(f"recorded {path}")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s NAME [--repeat N] [--setup CMD] [--figure NAME=REGEX] -- COMMAND [ARG ...]\n"
        "       %(prog)s --show FILE",
    )
    parser.add_argument("name", nargs="?", help="the record's name: benchmarks/results/<name>-<date>.json")
    parser.add_argument("--repeat", type=int, default=MIN_REPEATS, help=f"repetitions (at least {MIN_REPEATS})")
    parser.add_argument("--setup", help="a shell command run before each repetition, untimed")
    parser.add_argument(
        "--figure",
        type=picked_figure,
        action="append",
        default=[],
        metavar="NAME=REGEX",
        help="also record the regex's first group (its last match in the output) as NAME; repeatable",
    )
    parser.add_argument("--show", type=Path, help="print a record's machine and figures, run nothing")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the record goes (%(default)s)")
    args = parser.parse_args(own)
    if args.show:
        print(show(read_json(args.show)))
        return
    if not args.name:
        parser.error("a name is required (or --show FILE)")
    record(args.name, command, args.repeat, args.setup, args.results, dict(args.figure))


if __name__ == "__main__":
    main()
