"""Study configs: composing, cross-checks the JSON schema cannot express, grid expansion, stable grid-point ids,
packs.

`snakemake.utils.validate` checks types and key names against workflow/schemas/config.schema.yaml
first; :func:`check` then checks what refers to what (an experiment's datasets and methods, the
grids' keys) and raises :class:`ConfigError` naming the key and what is allowed. Standard library and
PyYAML only, like the whole planning package: the DAG is built without torch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from peftstudy import methods
from peftstudy.plan.canonical import canonical, canonical_value, config_hash, gp_id, normalise
from peftstudy.plan.defaults import DEFAULTS
from peftstudy.plan.recipe import check_choices
from peftstudy.plan.sources.archive import ARCHIVE_DIR, archive_path
from peftstudy.plan.sources.base import REPORT_DATASET_KEYS, data_spec
from peftstudy.plan.sources.base import ConfigError as ConfigError  # where every check raises it

__all__ = [  # defined elsewhere, asked for here too
    "ConfigError",
    "archive_path",
    "canonical",
    "canonical_value",
    "config_hash",
    "data_spec",
    "gp_id",
    "normalise",
]


def load_yaml(path: str) -> dict[str, Any]:
    """A study config file, its syntax errors named by file, line and column (Snakemake's own message for a
    --configfile it cannot parse names neither: `peftstudy estimate --configfile FILE` names both)."""
    import yaml

    try:
        with open(path) as handle:
            config = yaml.safe_load(handle)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}{where}: not valid YAML ({err.problem or err.context}); fix the syntax there"
        ) from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a study config is a mapping of keys (study:, experiments:, ...)")
    return config


def compose(config: dict[str, Any]) -> dict[str, Any]:
    """The config with its `include` files (other study configs, paths from the working directory) merged
    underneath, in order, then its own keys on top: mappings merge key by key, anything else is replaced.
    How studies/paper.yaml brings the VTAB, many-shot and robustness studies together without copying them."""
    composed: dict[str, Any] = {}
    for path in config.get("include", []):
        try:
            included = compose(load_yaml(path))
        except FileNotFoundError:
            raise ConfigError(f"include: {path} not found (paths are relative to where snakemake runs)") from None
        update_config(composed, included)
    update_config(composed, {k: v for k, v in config.items() if k != "include"})
    return composed


def update_config(config: dict[str, Any], overwrite: Mapping[str, Any]) -> None:
    """`overwrite` merged into `config` in place as Snakemake merges several --configfile
    (snakemake.utils.update_config): mappings key by key, rebuilt; anything else replaced."""
    for key, value in overwrite.items():
        if isinstance(value, Mapping):
            sub = config.get(key)
            sub = dict(sub) if isinstance(sub, Mapping) else {}
            update_config(sub, value)
            config[key] = sub
        else:
            config[key] = value


def expand_grid(grid: Mapping[str, list], authors_keys: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Cartesian product in sklearn ParameterGrid order: keys sorted, the last key varying fastest, each key's
    values in the order listed. Keys sort by the authors' name of them (`authors_keys`, ours where they had none):
    the order decides ties (the last best point wins, docs/protocol.md §B.2, §C.3), and the authors' ParameterGrid
    sorted
    their names. Only the order: a point's id hashes its sorted dict."""
    names = authors_keys or {}
    keys = sorted(grid, key=lambda k: (names.get(k, k), k))
    return [
        {k: normalise(v) for k, v in zip(keys, values, strict=True)}
        for values in itertools.product(*(grid[k] for k in keys))
    ]


def method_grid(experiment: Mapping[str, Any], method: str) -> list[dict[str, Any]]:
    """The experiment's common grid, with the method's own grid keys added or overriding (e.g. full's lr),
    iterated in the order the authors' code iterates it."""
    grid = dict(experiment["grid"])
    grid.update(experiment.get("method_grids", {}).get(method, {}))
    return expand_grid(grid, methods.authors_keys(method))


# (experiment, method) -> {gp id: hp}, in grid order.
Grids = dict[tuple[str, str], dict[str, dict[str, Any]]]


def grids(config: Mapping[str, Any]) -> Grids:
    """(experiment, method) -> {gp id: hp}, in grid order."""
    return {
        (exp_name, method): _method_points(exp_name, exp, method)
        for exp_name, exp in config["experiments"].items()
        for method in exp["methods"]
    }


def _method_points(exp_name: str, exp: Mapping[str, Any], method: str) -> dict[str, dict[str, Any]]:
    """{gp id: hp} of one method's grid in an experiment, in grid order."""
    points = method_grid(exp, method)
    ids = {gp_id(hp): hp for hp in points}
    if len(ids) != len(points):
        raise ConfigError(f"experiments.{exp_name}: the grid of {method} repeats a grid point")
    return ids


def fetched_archive(url: str) -> str | None:
    """The one of `archives` that a backbone's source URL names (a checkpoint fetched as an archive), else None."""
    return url.removeprefix(ARCHIVE_DIR) if url.startswith(ARCHIVE_DIR) else None


def tuning_sets(config: Mapping[str, Any], dataset: str) -> list[str]:
    """The datasets a grid is tuned on for `dataset`: itself and each of its tuning folds (averaged by select)."""
    return [dataset, *config["datasets"].get(dataset, {}).get("folds", [])]


def packs(points: list[str], size: int) -> dict[str, list[str]]:
    """A (method, dataset)'s tune jobs: {job name: its grid-point ids, in grid order}.

    `size` 1: one job per point, named by its id. Otherwise each point goes to pack `int(id) % n` of `n` packs,
    `n` the smallest power of two that keeps the mean pack at `size` points or fewer, named pack<n>-<index>. A
    point's pack depends on its own id and `n` only, so adding a point changes one pack and removing one changes
    one (`n` changes only when the grid's size crosses a power of two times `size`); with the tune job's result
    cache (train.runs.tune), a job whose pack changed trains only its new points.
    """
    if size == 1:
        return {gp: [gp] for gp in points}
    count = 1 << max(0, math.ceil(math.log2(len(points) / size)))
    members: dict[int, list[str]] = {}
    for gp in points:
        members.setdefault(int(gp, 16) % count, []).append(gp)
    return {f"pack{count}-{index}": members[index] for index in sorted(members)}


def tune_jobs(config: Mapping[str, Any], expanded: Grids | None = None) -> dict[tuple[str, str], dict[str, list[str]]]:
    """(experiment, method) -> {job name: its grid-point ids}: every tune job of the study (see :func:`packs`);
    `expanded`: the config's :func:`grids`, where the caller has them."""
    return {
        (exp_name, method): packs(list(points), runs_per_job(config["experiments"][exp_name], "tune"))
        for (exp_name, method), points in (expanded or grids(config)).items()
    }


def selection_jobs(
    tuning_sets: Mapping[str, Sequence[str]], jobs: Mapping[str, Mapping[str, list[str]]]
) -> list[tuple[str, str, str, list[str]]]:
    """The tune jobs one selection reads, in the order of its files: (tuning set, method, job name, its grid-point
    ids) for each dataset and each method (by name: a JSON argument's keys come sorted), each of the dataset's
    tuning sets and each of the method's `jobs`. The plan lists the select job's inputs in this order and select
    reads them back in it."""
    return [
        (tuning_set, method, name, points)
        for dataset in sorted(tuning_sets)
        for method in sorted(jobs)
        for tuning_set in tuning_sets[dataset]
        for name, points in jobs[method].items()
    ]


def runs_per_job(experiment: Mapping[str, Any], phase: str) -> int:
    """How many tune grid points (on average, packs: :func:`packs`) one job of `experiment` trains in one process
    (a final job trains one seed)."""
    return int(experiment.get("runs_per_job", {}).get(phase, 1))


def _check_sources(config: Mapping[str, Any]) -> None:
    """Each dataset's source, its keys and its own checks (plan.sources)."""
    from peftstudy.plan import sources

    for name, spec in config["datasets"].items():
        sources.check(name, spec, config)


def vtab_task(spec: Mapping[str, Any]) -> str | None:
    """The VTAB task a dataset's images come from (its source's, plan.sources: the processed archive's folder, a
    local copy of it, the TFDS task); None for made-up or other images (synthetic, ImageNet, many-shot), whatever
    the dataset's name. The report compares our choices with the authors' where this is one of their tasks."""
    from peftstudy.plan import sources

    return sources.of(spec).vtab_task(spec)


def _check_batch_sizes(config: Mapping[str, Any]) -> None:
    """A batch no larger than the training split, where the config gives its size (synthetic datasets): the
    loop drops the last partial batch, so a larger one leaves an epoch with no step. Other datasets are
    checked when their run starts (runs.Session)."""
    datasets = config["datasets"]
    for exp_name, exp in config["experiments"].items():
        batch = exp["recipe"]["batch_size"]
        for name in exp["datasets"]:
            for tuned in tuning_sets(config, name):
                train = datasets.get(tuned, {}).get("train")
                if train is not None and 0 < train < batch:
                    raise ConfigError(
                        f"experiments.{exp_name}.recipe.batch_size {batch} is larger than the {train} training "
                        f"images of datasets.{tuned}.train: lower the batch size or raise the train size"
                    )


def _check_weights_pinned(config: Mapping[str, Any]) -> None:
    """Weights with no sum, no source and no pretraining would be loaded unchecked: they must be pinned (a user who
    put them there can hash them; allow_unpinned covers only downloads, whose sums the fetch reports)."""
    for name, backbone in {"backbone": config["backbone"], **config.get("backbones", {})}.items():
        key = "backbone" if name == "backbone" else f"backbones.{name}"
        # A checkpoint fetched as an archive first is one of `archives`, pinned there.
        url = backbone.get("source", {}).get("url", "")
        archive = fetched_archive(url)
        if archive is not None and archive not in config.get("archives", {}):
            raise ConfigError(
                f"{key}.source.url {url}: {archive!r} is not one of `archives`; define it there (url, sha256)"
            )
        if backbone["sha256"] is None and "source" not in backbone and not backbone["pretrain"]:
            raise ConfigError(
                f"{key}.sha256 is null, but {key} has no source to fetch its weights from and is not pretrained: "
                f"{backbone['weights']} would be loaded unchecked. Pin it: `sha256sum {backbone['weights']}`, then "
                f"{key}.sha256: <that sum> in the config."
            )


def check(config: Mapping[str, Any]) -> Grids:
    """Cross-references: every dataset and method an experiment names exists; every grid key is taken, every grid
    point's values too. Returns the expanded :func:`grids` (expanded here once, for the plan to keep)."""
    from peftstudy.plan import sources

    expanded: Grids = {}
    known_methods = methods.names()
    datasets = config["datasets"]
    _check_sources(config)
    _check_batch_sizes(config)
    _check_weights_pinned(config)
    for exp_name, exp in config["experiments"].items():
        for i, name in enumerate(exp["datasets"]):
            if name not in datasets:
                raise ConfigError(
                    f"experiments.{exp_name}.datasets[{i}]: unknown dataset {name!r}; "
                    f"defined under datasets: {', '.join(datasets)}"
                )
            sources.of(datasets[name]).check_trained(name, datasets[name], exp_name)
            for fold in datasets[name].get("folds", []):
                if fold not in datasets or datasets[fold]["classes"] != datasets[name]["classes"]:
                    raise ConfigError(
                        f"datasets.{name}.folds: {fold!r} must be a dataset with the same classes "
                        f"({datasets[name]['classes']})"
                    )
        for i, name in enumerate(exp["methods"]):
            if name not in known_methods:
                raise ConfigError(
                    f"experiments.{exp_name}.methods[{i}]: unknown method {name!r}; known: {', '.join(known_methods)}"
                )
        for name in exp.get("method_grids", {}):
            if name not in exp["methods"]:
                raise ConfigError(
                    f"experiments.{exp_name}.method_grids.{name}: {name!r} is not one of this experiment's methods "
                    f"({', '.join(exp['methods'])})"
                )
        for method in exp["methods"]:
            keys = set(exp["grid"]) | set(exp.get("method_grids", {}).get(method, {}))
            allowed = set(methods.RECIPE_KEYS) | set(methods.get(method).keys())
            unknown = sorted(keys - allowed)
            if unknown:
                raise ConfigError(
                    f"experiments.{exp_name}: method {method!r} takes no grid key {', '.join(map(repr, unknown))}; "
                    f"allowed: {', '.join(sorted(allowed))}"
                )
        # Values too (a misspelt variant, a rank of 0), before any job starts.
        for method in exp["methods"]:
            expanded[exp_name, method] = _method_points(exp_name, exp, method)
            for hp in expanded[exp_name, method].values():
                try:
                    methods.split_hp(method, hp)
                except (TypeError, ValueError) as err:
                    raise ConfigError(f"experiments.{exp_name}: {method} grid point {hp}: {err}") from err
        try:
            check_choices(exp["recipe"], f"experiments.{exp_name}.recipe")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if exp["selection"].get("metric") == "val_best_top1" and not exp["recipe"].get("eval_every"):
            raise ConfigError(
                f"experiments.{exp_name}.selection.metric val_best_top1 needs val evaluated during training: "
                "set recipe.eval_every (1 = every epoch, as the authors' CLIP runs)"
            )

    # One mapping per experiment, not one list: experiments run different methods (the mini study 16 and 4).
    for exp_name, chosen in config.get("analysis", {}).get("methods", {}).items():
        exp = config["experiments"].get(exp_name)
        if exp is None:
            raise ConfigError(
                f"analysis.methods.{exp_name}: unknown experiment {exp_name!r}; "
                f"defined: {', '.join(config['experiments'])}"
            )
        for i, name in enumerate(chosen):
            if name not in exp["methods"]:
                raise ConfigError(
                    f"analysis.methods.{exp_name}[{i}]: {name!r} is not one of this experiment's methods "
                    f"({', '.join(exp['methods'])})"
                )
    for name, spec in datasets.items():
        if "size_of" in spec and spec["size_of"] not in datasets:
            raise ConfigError(f"datasets.{name}.size_of: unknown dataset {spec['size_of']!r}")
    rob = config.get("robustness")
    if rob:
        exp = config["experiments"].get(rob["experiment"])
        if exp is None:
            raise ConfigError(
                f"robustness.experiment: unknown experiment {rob['experiment']!r}; "
                f"defined: {', '.join(config['experiments'])}"
            )
        if rob["dataset"] not in exp["datasets"]:
            raise ConfigError(
                f"robustness.dataset: {rob['dataset']!r} is not a dataset of experiment {rob['experiment']}"
            )
        for i, name in enumerate(rob["ood"]):
            if name not in datasets:
                raise ConfigError(f"robustness.ood[{i}]: unknown dataset {name!r}; defined: {', '.join(datasets)}")
            if datasets[name]["classes"] != datasets[rob["dataset"]]["classes"]:
                raise ConfigError(f"robustness.ood[{i}]: {name} has another label space than {rob['dataset']}")
            subset = datasets[name].get("class_subset")
            if isinstance(subset, list) and max(subset) >= datasets[name]["classes"]:
                classes = datasets[name]["classes"]
                raise ConfigError(f"datasets.{name}.class_subset: class {max(subset)} is outside its {classes} classes")
    for exp_name, exp in config["experiments"].items():
        name = exp.get("backbone")
        if name is None:
            continue
        other = config.get("backbones", {}).get(name)
        if other is None:
            raise ConfigError(
                f"experiments.{exp_name}.backbone: unknown backbone {name!r}; "
                f"defined under backbones: {', '.join(config.get('backbones', {})) or 'none'}"
            )
        if other["pretrain"]:
            raise ConfigError(f"backbones.{name}.pretrain: only the study's `backbone` can be pretrained here")
        if other["image_size"] != config["backbone"]["image_size"]:
            # The prepared caches are shared by every experiment, at the study backbone's input size.
            raise ConfigError(
                f"backbones.{name}.image_size {other['image_size']} differs from backbone.image_size "
                f"{config['backbone']['image_size']}: datasets are prepared once, at one size"
            )
    if "pretrain" in config:
        try:
            check_choices(config["pretrain"]["recipe"], "pretrain.recipe")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    backbone = config["backbone"]
    if backbone.get("pretrain") and config.get("pretrain", {}).get("dataset") not in datasets:
        raise ConfigError("backbone.pretrain is true, so pretrain.dataset must name a dataset under datasets")
    return expanded


# The recipe keys the report's captions name: the switches between the authors' quirks and the clean protocol.
REPORT_RECIPE_KEYS = ("epochs", "lr_step", "normalize", "augment", "drop_path", "peft_init", "precision")


def report_context(config: Mapping[str, Any], expanded: Grids | None = None) -> dict[str, Any]:
    """What the report needs from the config beyond the results: dataset groups and sizes-of, each experiment's
    recipe switches, selection rule, planned seeds and grid sizes (so that what is missing can be said), and the
    VTAB task each dataset is (beside the authors' choices). `expanded`: the config's :func:`grids`, if known."""
    sizes = expanded or grids(config)
    return {
        "datasets": {
            name: {key: spec[key] for key in REPORT_DATASET_KEYS if key in spec}
            for name, spec in config["datasets"].items()
        },
        "experiments": {
            name: {
                "datasets": exp["datasets"],
                "seeds": exp["seeds"],
                "head": exp["head"],
                "tie_break": exp["selection"]["tie_break"],
                "selection_metric": exp["selection"].get("metric", DEFAULTS["selection_metric"]),
                "recipe": {k: exp["recipe"][k] for k in REPORT_RECIPE_KEYS if k in exp["recipe"]},
                "grid_points": {m: len(sizes[name, m]) for m in exp["methods"]},
            }
            for name, exp in config["experiments"].items()
        },
        "robustness_experiment": (config.get("robustness") or {}).get("experiment", ""),
        "vtab_tasks": {name: vtab_task(spec) for name, spec in config["datasets"].items() if vtab_task(spec)},
    }
