"""The specs of the stages other than training: data, selection, analysis and the report (plan.specs holds the
machinery and the training jobs' specs). Apart from plan.specs because a training job's code digest covers the
modules its run imports (plan.depends), plan.specs among them: a new analysis, table or data job defined here
reruns no training. `peftstudy run` imports this module when a spec's stage is not one of plan.specs'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from peftstudy.plan.specs import FINAL, Backbone, GridPoint, Spec, SpecError, input_file, output_file

# The data jobs' specs.


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerateSpec(Spec):
    """A synthetic dataset rendered in the processed-VTAB layout (data.synthetic): its entry without the report's
    keys, at the input size (`rendering`), and the study's seed."""

    stage: ClassVar[str] = "generate"
    target: ClassVar[str] = "peftstudy.data.synthetic:run"

    dataset: str
    rendering: Mapping[str, Any]
    seed: int
    source: str = output_file()  # the layout folder
    manifest: str = output_file()


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrepareSpec(Spec):
    """One split's list decoded into a uint8 tensor cache (data.layout.prepare)."""

    stage: ClassVar[str] = "prepare"
    target: ClassVar[str] = "peftstudy.data.layout:run"

    source: str = input_file()  # the dataset's layout folder (its source's job writes it, plan.sources)
    manifest: str = input_file()
    split: Literal["train", "val", "trainval", "test"]
    image_size: int  # 0: keep the native size
    cache: str = output_file()


@dataclasses.dataclass(frozen=True, kw_only=True)
class IndexSpec(Spec):
    """A dataset folder already in the layout, from an archive or a local folder: linked into the dataset's
    `source/` (the one output shape of every data source) and its manifest written (data.layout)."""

    stage: ClassVar[str] = "index"
    target: ClassVar[str] = "peftstudy.data.layout:run_index"

    dataset: str
    folder: str  # the layout folder (a setting: it may lie inside an extracted archive)
    classes: int
    about: Mapping[str, Any]  # where the folder came from (provenance), plan.sources.local.Indexed.record
    origin: str = input_file()  # what the folder comes from: the extracted archive, or the local folder itself
    checksum: str | None = input_file(default=None)  # the archive's sha256 file, if it came from one
    source: str = output_file()  # links to the folder's entries
    manifest: str = output_file()


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImagenetSpec(Spec):
    """An ImageNet set the user downloaded, checked, its lists and links written in the layout (data.imagenet)."""

    stage: ClassVar[str] = "imagenet"
    target: ClassVar[str] = "peftstudy.data.imagenet:run"

    imagenet_set: Literal["imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_r", "imagenet_a"]
    root: str  # the folder the set was downloaded to (from the config)
    dataset: str
    shots: int  # imagenet: training images per class
    val_per_class: int
    seed: int  # the sampling seed
    source: str = output_file()  # holds checked.json, the gate's record, besides the lists and links
    manifest: str = output_file()


@dataclasses.dataclass(frozen=True, kw_only=True)
class ManyshotListsSpec(Spec):
    """The authors' split lists of a many-shot subset, downloaded and sha256-checked (data.manyshot)."""

    stage: ClassVar[str] = "manyshot-lists"
    target: ClassVar[str] = "peftstudy.data.manyshot:run_lists"

    kind: Literal["cifar100", "resisc45"]
    subset: str
    base_url: str  # where the lists are ("": GitHub at the pinned commit)
    pins: Mapping[str, str]  # {"file": "sha256"}: your own lists in place of theirs
    lists: str = output_file()


@dataclasses.dataclass(frozen=True, kw_only=True)
class ManyshotSpec(Spec):
    """A many-shot subset (and fold) in the layout: the authors' lists over the extracted archive's images."""

    stage: ClassVar[str] = "manyshot"
    target: ClassVar[str] = "peftstudy.data.manyshot:run"

    kind: Literal["cifar100", "resisc45"]
    subset: str
    fold: int
    name: str  # the dataset's name in the manifest
    pins: Mapping[str, str]
    archive: str = input_file()  # the extracted archive (cifar-100-python/ or NWPU-RESISC45/ inside)
    checksum: str = input_file()  # the archive's sha256 file (provenance)
    lists: str = input_file()
    source: str = output_file()
    manifest: str = output_file()


@dataclasses.dataclass(frozen=True, kw_only=True)
class VtabTfdsSpec(Spec):
    """A VTAB-1K task built from TensorFlow Datasets in the layout (data.vtab_tfds)."""

    stage: ClassVar[str] = "vtab-tfds"
    target: ClassVar[str] = "peftstudy.data.vtab_tfds:run"

    task: str  # the processed folder's name (cifar, ..., smallnorb_ele)
    data_dir: str  # TFDS data_dir: downloads and prepared builders
    dataset: str  # the manifest's dataset name
    source: str = output_file()
    manifest: str = output_file()


def final_runs(
    records: list[Mapping[str, Any]], role: str, given: tuple[str, ...], stage: str
) -> list[tuple[Mapping[str, Any], Mapping[str, Any], str]]:
    """(record, run, file) for each run the final records list, its file of `role` (a :class:`FinalFiles` field)
    as the spec names it: the spec's files must be exactly the records' (SpecError names those that differ: a
    record collected after the spec was made)."""
    name = getattr(FINAL, role)
    listed = [(record, run, f"{run['dir']}/{name}") for record in records for run in record["runs"]]
    missing = sorted({path for _, _, path in listed} - set(given))
    extra = sorted(set(given) - {path for _, _, path in listed})
    if missing or extra:
        raise SpecError(
            f"{stage}: the spec's {role} files are not the final records' (not named by the spec: {missing[:3]}; "
            f"not in a record: {extra[:3]}): the records changed after the spec was made; run the workflow again"
        )
    return listed


# Selection.


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelectSpec(Spec):
    """One experiment's selection: each (dataset, method)'s grid point, chosen on val from every tune job's file
    (in the plan's order, study.selection_jobs). `grids`: each method's points in grid order (ties); `datasets`:
    each dataset's tuning sets (itself and its folds); `runs_per_job`: which tune job holds which point."""

    stage: ClassVar[str] = "select"
    target: ClassVar[str] = "peftstudy.select:run"
    as_file: ClassVar[bool] = True

    grids: Mapping[str, tuple[GridPoint, ...]]
    datasets: Mapping[str, tuple[str, ...]]
    runs_per_job: int
    tie_break: Literal["last", "first"]
    metric: Literal["val_top1", "val_best_top1"]
    metrics: tuple[str, ...] = input_file()
    selected: str = output_file()
    summary: str = output_file()  # tune.csv: every method's grid points and val scores


# The analysis stages' specs.


@dataclasses.dataclass(frozen=True, kw_only=True)
class CollectSpec(Spec):
    """The record of one (experiment, dataset, method)'s selected finals: its own entry of the experiment's
    selected.json (a value, not the file: another choice changing there reruns no collect of this one) and each
    seed's metrics.json (none: every grid point diverged)."""

    stage: ClassVar[str] = "collect"
    target: ClassVar[str] = "peftstudy.collect:run"

    experiment: str
    dataset: str
    method: str
    choice: Mapping[str, Any]
    metrics: tuple[str, ...] = input_file()
    record: str = output_file()


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnsembleSpec(Spec):
    """One dataset's analysis: confidence, agreement and ensembles of its methods' final test logits."""

    stage: ClassVar[str] = "ensemble"
    target: ClassVar[str] = "peftstudy.ensemble:run"

    finals: tuple[str, ...] = input_file()  # final.json of each method on the dataset
    logits: tuple[str, ...] = input_file()  # each of their runs' logits.npz (FINAL.logits), as the records list them
    methods: tuple[str, ...]  # those whose pairs and triples are ensembled
    confident_k: float  # K most confident: a count, or a fraction if < 1
    ensembles: str = output_file()
    agreement: str = output_file()


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalSet:
    """A robustness test set: its dataset name and its prepared test split."""

    name: str
    test: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class RobustnessSpec(Spec):
    """One method's finals on the in-distribution test set and the shifted ones, and its WiSE curves."""

    stage: ClassVar[str] = "robustness"
    target: ClassVar[str] = "peftstudy.robustness:run"

    method: str
    backbone: Backbone
    final: str = input_file()  # final.json of the method on the in-distribution dataset
    # Each of its runs' metrics.json and trained weights (FINAL.metrics, FINAL.peft), as the record lists them.
    metrics: tuple[str, ...] = input_file()
    peft: tuple[str, ...] = input_file()
    in_distribution: EvalSet
    shifted: tuple[EvalSet, ...]
    alphas: tuple[float, ...]
    # The sets covering part of the classes: name -> its classes (or the name of a mask), AnalysisJobs.class_subsets.
    class_subsets: Mapping[str, Any]
    device: str
    ood: str = output_file()
    wise: str = output_file()

    def inputs(self) -> dict[str, Any]:
        """Besides the final record and the backbone's files, each test set's split under its dataset's name."""
        sets = (self.in_distribution, *self.shifted)
        return {**super().inputs(), **{test_set.name: test_set.test for test_set in sets}}


# The report's specs.

# The tables the tables stage writes and the report reads, the one list of their names: name -> its title on the
# page, where the page shows it as it is ("": the page draws it its own way, or only links its CSV). Each is built
# by the function report.tables registers under its name (@builds); the tables rule's outputs and the report's
# copies come from here.
TABLES: dict[str, str] = {
    "tune": "",
    "selection_vs_authors": "",
    "final": "",
    "results": "",
    "vtab": "",
    "group_means": "",
    "datasets": "",
    "experiments": "",
    "compute": "",
    "ensembles": "",
    "seed_ensembles": "",
    "agreement": "",
    "triples": "",
    "venn": "",
    "confidence": "",
    "ood": "",
    "wise": "",
    "mixed": "",
}
# The authors' numbers (docs/protocol.md §H), transcribed with their sources: report/data/authors_<name>.csv,
# copied beside our tables under the name authors_<name>.
AUTHORS = ("vtab1k", "vtab1k_selection", "reruns", "manyshot", "clip_ood", "wise")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TablesSpec(Spec):
    """Tidy CSV tables of everything the study computed, into `out_dir` (report.tables): every tune summary, tune
    job file (provenance), final record, analysis file and robustness file, the manifests, every training job's
    benchmark, the authors' numbers; the study's facts and cost estimate (`context`). Handed over as a file: the
    paper study's is ~600 KB."""

    stage: ClassVar[str] = "tables"
    target: ClassVar[str] = "peftstudy.report.tables:run"
    as_file: ClassVar[bool] = True

    study: str
    config_hash: str
    context: Mapping[str, Any]
    tune: tuple[str, ...] = input_file()
    tune_metrics: tuple[str, ...] = input_file()
    finals: tuple[str, ...] = input_file()
    final_metrics: tuple[str, ...] = input_file()  # each of their runs' metrics.json, as the records list them
    # Each ensembles.json and agreement.json with what it is ({experiment, dataset, kind, path}); each ood.json and
    # wise.json ({method, kind, path}): read as given, never from its path. The kind is its spec's output role.
    analysis: tuple[Mapping[str, str], ...]
    robustness: tuple[Mapping[str, str], ...]
    manifests: tuple[str, ...] = input_file()
    # Every training job's benchmark.tsv with the job it measured ({phase, experiment, dataset, method, job, path}).
    benchmarks: tuple[Mapping[str, str], ...]
    authors: tuple[str, ...] = input_file()
    tables: Mapping[str, str] = output_file()  # each of TABLES and the authors' copies: name -> its CSV

    def inputs(self) -> dict[str, Any]:
        """Besides the files named by field, the analysis and robustness files and the benchmarks."""
        named = {
            "analysis": [a["path"] for a in self.analysis],
            "robustness": [r["path"] for r in self.robustness],
            "benchmarks": [b["path"] for b in self.benchmarks],
        }
        return {**super().inputs(), **{role: paths for role, paths in named.items() if paths}}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportSpec(Spec):
    """The page: the figures notebook executed on the tables (papermill), the template rendered (report.render)."""

    stage: ClassVar[str] = "report"
    target: ClassVar[str] = "peftstudy.report.render:run"

    tables: str  # the tables' folder, where the notebook reads them
    csvs: Mapping[str, str] = input_file()  # the tables job's files: name -> CSV
    notebook: str = input_file()  # the figures notebook
    template: str = input_file()
    tolerance: float  # points of top-1 above which a difference from the authors' is marked
    html: str = output_file()
    executed: str = output_file()  # the notebook as executed
    # The tables beside the page (its reader takes the numbers as CSV): name -> the copy of `csvs[name]`.
    copies: Mapping[str, str] = output_file()
