"""A job is a spec: one frozen dataclass per stage, the one seam between the plan and the stages.

The plan builds a job's spec from the config (its settings, the files it reads and those it writes); the rule
hands it to `peftstudy run` as one canonical JSON argument (a Snakemake `params` value, so any change of any field
reruns the job); the stage gets the spec back, checked against the same dataclasses (:func:`load`: every key
path, unknown and missing keys, each value's type), and reads its fields by name. What a job is given is defined
here once: no argument parser, no shell string and no dict shape in between to drift.

A field is a setting, an input file (:func:`input_file`) or an output file (:func:`output_file`): the rule's
`input:` is :meth:`Spec.inputs` (the roles are the field names) and a test checks its `output:` is
:meth:`Spec.outputs`. What does not change a result (threads, runs trained at once) is not in a spec: it is an
option of `peftstudy run` (:class:`Options`), so changing it reruns nothing.

Standard library only, like the whole planning package: Snakemake builds every spec at DAG time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from peftstudy.io import atomic_path

# The field metadata key saying whether a field is an input file, an output file or (absent) a setting.
IO = "io"
# A spec longer than this is refused at DAG time, naming the job: one argument of a command line must stay under
# Linux's 128 KiB (MAX_ARG_STRLEN), else the job fails to start (E2BIG).
MAX_ARGUMENT = 100_000


class SpecError(ValueError):
    """A spec that does not fit its stage's dataclass: the message names the stage, the key path and the fix."""


def input_file(**kwargs: Any) -> Any:
    """A field naming a file (or folder) the job reads: one of the rule's inputs, under the field's name."""
    return dataclasses.field(metadata={IO: "in"}, **kwargs)


def output_file(**kwargs: Any) -> Any:
    """A field naming a file the job writes: one of the rule's outputs, under the field's name."""
    return dataclasses.field(metadata={IO: "out"}, **kwargs)


@dataclasses.dataclass(frozen=True)
class Options:
    """How a job runs, not what it computes: `peftstudy run --threads N --concurrent N` (never in a spec)."""

    threads: int = 1
    # Runs trained at once, interleaved step by step (0: on a GPU as many of the job's as fit, measured; one on the
    # CPU).
    concurrent: int = 0


# Every stage's spec class by its `stage` name (filled as the classes are defined).
STAGES: dict[str, type[Spec]] = {}
# Where the other stages' spec classes are defined (their modules register them as they are imported), imported
# only to read a spec of one of them. Not imported by name: a training run imports this module, its code digest
# (plan.depends) covers the modules that run imports, and so a new data source, analysis or table reruns no
# training.
OTHER_SPEC_MODULES = ("peftstudy.plan.stage_specs", "peftstudy.plan.sources")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Spec:
    """What one job of a stage is given. Subclasses set `stage` (the name in the JSON, what `peftstudy run`
    dispatches on) and `target` (`module:function`, imported only when the job runs, called with the spec and the
    :class:`Options`)."""

    stage: ClassVar[str] = ""
    target: ClassVar[str] = ""
    # Handed over as a file (rules spec_file and tables_spec, `peftstudy run @FILE`) rather than as one argument: a
    # spec that may approach the 128 KiB one argument can hold (on the paper study select's ~80 KB, tables' ~570 KB).
    as_file: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("stage"):
            STAGES[cls.stage] = cls

    def inputs(self) -> dict[str, Any]:
        """The files the job reads, by role (its own fields' and its parts', e.g. a backbone's weights): a path,
        or a list of paths."""
        return input_files(self)

    def outputs(self) -> dict[str, str]:
        """The files the job writes, by role."""
        return _files(self, "out")

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, **_plain(self)}

    def canonical(self) -> str:
        """The canonical JSON text (keys sorted, no spaces): equal specs give equal text."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    def digest(self) -> str:
        """sha256 of the canonical text: the `params` value of a spec handed over as a file (exact staleness
        without keeping the whole text in Snakemake's metadata)."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def to_json(self) -> str:
        """The canonical text as one command-line argument: as a Snakemake `params` value it reruns the job
        exactly when a field changed."""
        text = self.canonical()
        if len(text.encode()) > MAX_ARGUMENT:
            raise SpecError(
                f"the {self.stage} job's spec is {len(text.encode())} bytes, over the {MAX_ARGUMENT} one command-line "
                f"argument may hold: hand it over as a file ({type(self).__name__}.as_file, `peftstudy run @FILE`)"
            )
        return text


def input_files(part: Any) -> dict[str, Any]:
    """The files a spec or a part of one (a :class:`Backbone`) names as inputs, by role; none left empty."""
    return _files(part, "in")


def output_roles(cls: type[Spec]) -> tuple[str, ...]:
    """The roles of the files a stage writes (its output fields), in field order."""
    return tuple(field.name for field in dataclasses.fields(cls) if field.metadata.get(IO) == "out")


def _files(spec: Any, io: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        if field.metadata.get(IO) == io and value:
            # A path, a tuple of paths, or a mapping of names to paths (a table's name to its file).
            if isinstance(value, str):
                found[field.name] = value
            else:
                found[field.name] = list(value.values() if isinstance(value, Mapping) else value)
        elif dataclasses.is_dataclass(value):
            found.update(_files(value, io))
    return found


def _plain(value: Any) -> Any:
    """JSON's view of a spec: dataclasses as objects, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def write(path: str | Path, spec: Spec) -> None:
    """A spec's canonical text in a file, atomically (for `peftstudy run @FILE`)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(spec.canonical())


# Reading a spec back, checked against its dataclass.


def from_json(text: str) -> Spec:
    """The spec a JSON text holds, its class picked by its `stage` and every field checked (SpecError)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecError(f"a spec must be a JSON object ({error}): {text[:80]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("stage"), str):
        raise SpecError(f'a spec is a JSON object with a "stage" (one of {sorted(all_stages())}): {text[:80]}')
    stage = data.pop("stage")
    known = STAGES if stage in STAGES else all_stages()
    if stage not in known:
        raise SpecError(f"no stage {stage!r}: the spec's stage is one of {sorted(known)}")
    return load(known[stage], data, stage)


def all_stages() -> dict[str, type[Spec]]:
    """Every stage's spec class by name, the other stages' modules imported."""
    for module in OTHER_SPEC_MODULES:
        importlib.import_module(module)
    return STAGES


def load(cls: type[Any], data: Any, where: str = "") -> Any:
    """`cls` (a spec dataclass or a part of one) made of JSON data, each value checked against its field's type:
    SpecError names the key path (`tune: run.backbone.sha256: ...`), keys unknown or missing, the type expected."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: expected an object ({cls.__name__}), got {_shown(data)}")
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; {cls.__name__} has {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise SpecError(f"{where}: missing key {name!r} ({_named(hints[name])})")
            continue
        values[name] = _checked(data[name], hints[name], f"{where}.{name}")
    return cls(**values)


def _checked(value: Any, hint: Any, where: str) -> Any:
    """The value as the field holds it (lists as tuples, objects as dataclasses), or SpecError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return load(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return _checked(value, arm, where)
            except SpecError:
                continue
        raise SpecError(f"{where}: expected {_named(hint)}, got {_shown(value)}")
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, list | tuple):
            raise SpecError(f"{where}: expected a list, got {_shown(value)}")
        return tuple(_checked(item, args[0], f"{where}[{i}]") for i, item in enumerate(value))
    if origin in (Mapping, dict) or hint in (Mapping, dict):
        if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
            raise SpecError(f"{where}: expected an object, got {_shown(value)}")
        item = args[1] if args else Any
        return {key: _checked(entry, item, f"{where}.{key}") for key, entry in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise SpecError(f"{where}: expected one of {list(args)}, got {_shown(value)}")
        return value
    if hint is type(None):
        if value is not None:
            raise SpecError(f"{where}: expected null, got {_shown(value)}")
        return value
    # bool is an int to Python, not to JSON; an integer is a valid float (JSON has one number type).
    accepted = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}.get(hint)
    if accepted is None:
        raise TypeError(f"{where}: a spec field of type {hint!r} cannot be read from JSON")
    if not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool)):
        raise SpecError(f"{where}: expected {_named(hint)}, got {_shown(value)}")
    return value


def _named(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_named(arm) for arm in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return f"{type(value).__name__} {text[:60]}"


# The data stages' specs.


@dataclasses.dataclass(frozen=True, kw_only=True)
class ZeroShotHeadSpec(Spec):
    """CLIP's zero-shot head built once from the full checkpoint's text tower (models.clip)."""

    stage: ClassVar[str] = "zero-shot-head"
    target: ClassVar[str] = "peftstudy.models.clip:run_zero_shot_head"

    clip: str = input_file()  # the full CLIP checkpoint
    classnames: str  # imagenet (OpenAI's clean names), or a file: one a line
    clip_model: str  # open_clip config of the checkpoint
    device: str
    head: str = output_file()


# The training stages' specs.


@dataclasses.dataclass(frozen=True, kw_only=True)
class Backbone:
    """What a training job builds and loads: the architecture, its weights (checked against `sha256` where the
    config pins one), whether the pretrained head is kept, and CLIP's zero-shot head where it has one."""

    arch: str
    weights: str | None = input_file()  # None: random weights (tests, benchmarks)
    sha256: str | None
    keep_head: bool
    head: str | None = input_file(default=None)
    head_sha256: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class GridPoint:
    """A grid point: its id (plan.study.gp_id) and its settings, the method's and the recipe's."""

    gp: str
    hp: Mapping[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSettings:
    """What the tune and final runs of one (experiment, dataset, method) share. The recipe is checked by
    train.engine.Recipe, a grid point's settings by methods.split_hp (their own dataclasses)."""

    experiment: str
    dataset: str
    method: str
    recipe: Mapping[str, Any]
    backbone: Backbone
    device: str
    # Checkpoint each epoch here and resume from it (preemption); tune points are kept here too (train.cache).
    resume_dir: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TuneSpec(Spec):
    """Grid points of one method on one dataset: trained on train, scored on val, in order (the points one tune
    job trains: one, or a pack of them, plan.study.packs)."""

    stage: ClassVar[str] = "tune"
    target: ClassVar[str] = "peftstudy.train.runs:tune"

    run: RunSettings
    points: tuple[GridPoint, ...]
    seed: int
    train: str = input_file()
    val: str = input_file()
    manifest: str = input_file()
    metrics: str = output_file()


@dataclasses.dataclass(frozen=True)
class FinalFiles:
    """The files a final run writes in its folder, by role (FinalSpec's outputs); the stages that read a final
    run's folder from its record (collect, ensemble, robustness, tables) name them from here."""

    metrics: str = "metrics.json"
    logits: str = "logits.npz"
    peft: str = "peft.safetensors"


FINAL = FinalFiles()
FINAL_FILES = dataclasses.astuple(FINAL)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinalSpec(Spec):
    """One seed of the selected grid point: trained on train+val, test scored once at the end."""

    stage: ClassVar[str] = "final"
    target: ClassVar[str] = "peftstudy.train.runs:final"

    run: RunSettings
    point: GridPoint
    seed: int
    train: str = input_file()
    test: str = input_file()
    manifest: str = input_file()
    metrics: str = output_file()
    logits: str = output_file()
    peft: str = output_file()


@dataclasses.dataclass(frozen=True, kw_only=True)
class PretrainSpec(Spec):
    """The mini study's backbone pretrained from scratch on the pretraining set (train.pretrain)."""

    stage: ClassVar[str] = "pretrain"
    target: ClassVar[str] = "peftstudy.train.pretrain:run"

    arch: str
    recipe: Mapping[str, Any]
    lr: float
    wd: float
    seed: int
    device: str
    train: str = input_file()
    val: str = input_file()
    weights: str = output_file()
    metrics: str = output_file()
