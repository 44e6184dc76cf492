"""What a study will cost, before it is submitted (issue 16): per experiment its tune and final jobs, training
runs, images trained and GPU-hours, from throughput the project measured (``tables/throughput.csv``).

The config is composed and checked as the workflow does it (workflow/rules/common.smk), and the jobs are counted
with the plan's own functions: the tune jobs and their grid points (``Layout.tune_jobs``), on a dataset and on
each of its tuning folds (``Plan.train.tuning_sets``), the final jobs (one per seed),
the robustness and pretraining jobs (``Layout.other_benchmarks``). So the estimate counts the jobs the DAG has.

Images trained = runs x epochs x the images of the split a run trains on (tune: the tuning train split; final:
train+val), from the data spec, the VTAB-1K protocol or the many-shot lists' sizes (:func:`train_sizes`; a
dataset of unknown size is named, not guessed). Evaluation passes, data preparation and robustness jobs are not
in the images or the hours. GPU-hours = a job's images / its method's measured rate x the GPUs the job asks for
(``resources.<tune|final>.gpu``), one run at a time on its GPU. A method, model or precision without a measured
rate takes a labelled fallback (:func:`rate_for`): the slowest measured method of its class, full fine-tuning or
frozen-backbone (PEFT and the linear probe), so a fallback errs on the side of more hours.

Standard library and PyYAML only, like the whole planning tier: no torch.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from peftstudy import io
from peftstudy.plan import sources, study
from peftstudy.plan.jobs import Plan
from peftstudy.plan.tasks import task_table
from peftstudy.tables import open_table

THROUGHPUT_TABLE = "throughput.csv"
DEFAULT_GPU = "H100"  # the GPU the shipped rates were measured on
THROUGHPUT_COLUMNS = ("gpu", "model", "method", "precision", "images_per_second", "source")

# A VTAB-1K task: tuned on train800, its final run on train800val200 (docs/protocol.md §C.1, §C.4).
VTAB_1K_SIZES = (800, 1_000)
# Clevr-distance many-shot: TFDS clevr train (70,000), tuned on its first 90 % (data/vtab_tasks.clevr_many_shot).
CLEVR_MANYSHOT_SIZES = (63_000, 70_000)


@dataclass(frozen=True)
class Rate:
    """One measured row of throughput.csv: training images a second of one run alone on one GPU."""

    gpu: str
    model: str
    method: str
    precision: str
    images_per_second: float
    source: str


def read_rates(text_rows: Sequence[Mapping[str, str]] | None = None) -> list[Rate]:
    """The rows of throughput.csv (or of `text_rows`, the same columns)."""
    if text_rows is None:
        with open_table(THROUGHPUT_TABLE) as handle:
            text_rows = list(csv.DictReader(handle))
    return [Rate(**{**row, "images_per_second": float(row["images_per_second"])}) for row in text_rows]


def method_class(method: str) -> str:
    """Full fine-tuning trains every weight; every other method (the linear probe too) keeps the backbone frozen."""
    return "full fine-tuning" if method == "full" else "frozen-backbone"


def rate_for(rates: Sequence[Rate], gpu: str, model: str, method: str, precision: str) -> tuple[Rate, str]:
    """The measured rate of (gpu, model, method, precision), with the note "measured". Failing that, a fallback
    relaxing first the method (to the slowest measured method of its class), then the precision, then the model,
    then both, the same method's slowest rate preferred where it was measured; the note says what was relaxed."""
    on_gpu = [r for r in rates if r.gpu.lower() == gpu.lower()]
    if not on_gpu:
        known = ", ".join(sorted({r.gpu for r in rates}))
        raise ValueError(f"--gpu {gpu}: no measured throughput for it in {THROUGHPUT_TABLE}; measured: {known}")
    kind = method_class(method)
    wanted = {"model": model, "precision": precision}
    for keys in (("model", "precision"), ("model",), ("precision",), ()):
        found = [r for r in on_gpu if method_class(r.method) == kind and all(getattr(r, k) == wanted[k] for k in keys)]
        if not found:
            continue
        relaxed = [f"{k} {wanted[k]}" for k in ("model", "precision") if k not in keys]
        same = [r for r in found if r.method == method]
        slowest = min(same or found, key=lambda r: r.images_per_second)
        if same and not relaxed:
            return slowest, "measured"
        if same:
            return slowest, f"fallback: {', '.join(relaxed)} not measured; the method's slowest rate ({slowest.model})"
        relaxed.insert(0, "the method")
        return slowest, (
            f"fallback: {', '.join(relaxed)} not measured; the slowest measured {kind} method "
            f"({slowest.method} on {slowest.model})"
        )
    raise ValueError(f"{THROUGHPUT_TABLE}: no measured {kind} rate on {gpu}; add a row (benchmarks/gpu_table.sh)")


def train_sizes(config: Mapping[str, Any], dataset: str) -> tuple[int, int, str] | None:
    """(images a tune run trains on, images a final run trains on, where the sizes come from), or None: the
    dataset's source's (plan.sources), else its VTAB task's."""
    spec = config["datasets"][dataset]
    source = sources.of(spec)
    known = source.train_sizes(config, dataset)
    if known is not None:
        return known
    task = source.vtab_task(spec)
    if task == "clevr_dist_manyshot":
        return (*CLEVR_MANYSHOT_SIZES, "TFDS clevr train, 90 % tuned (docs/protocol.md §D.2)")
    row = task_table().get(task or "")
    if row is not None and row.group:
        return (*VTAB_1K_SIZES, "VTAB-1K train800 / train800val200")
    return None


@dataclass
class ExperimentCost:
    experiment: str
    tune_jobs: int = 0
    final_jobs: int = 0
    tune_runs: int = 0
    final_runs: int = 0
    images: int = 0
    gpu_hours: float = 0.0
    method_hours: dict[str, float] = field(default_factory=dict)  # gpu_hours by method
    # Datasets whose size is not known: their runs are counted, their images and hours are not.
    unsized: list[str] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return self.tune_runs + self.final_runs


@dataclass
class Estimate:
    study: str
    gpu: str
    experiments: list[ExperimentCost]
    other_jobs: int  # robustness and pretraining: Slurm jobs, their compute not estimated
    rates: dict[tuple[str, str], tuple[Rate, str]]  # (experiment, method) -> the rate used and its note

    @property
    def training_jobs(self) -> int:
        return sum(e.tune_jobs + e.final_jobs for e in self.experiments)


def load_config(paths: Sequence[str]) -> dict[str, Any]:
    """The study config as the workflow builds it: the --configfile files merged in order (as Snakemake merges
    them), its `include`s composed, then checked against the schema (the plan cross-checks the rest)."""
    config: dict[str, Any] = {}
    for path in paths:
        study.update_config(config, study.load_yaml(path))
    if "include" in config:
        config = study.compose(config)
    io.validate_config(config)
    return config


def precision_of(recipe: Mapping[str, Any]) -> str:
    """What a run computes in on a GPU: `auto` is bf16 autocast there (recipe.precision)."""
    precision = recipe.get("precision", "auto")
    return "bf16" if precision == "auto" else precision


def estimate(plan: Plan, gpu: str, rates: Sequence[Rate]) -> Estimate:
    """Every experiment's jobs, runs, images and GPU-hours on `gpu` at the measured `rates`."""
    tune_jobs = plan.layout.tune_jobs
    costs, used = [], {}
    for name, exp in plan.experiments.items():
        cost = ExperimentCost(name)
        epochs = exp["recipe"]["epochs"]
        model = plan.train.backbone_spec(name)["arch"]
        gpus = {phase: plan.resource_spec(phase, name)["gpu"] for phase in ("tune", "final")}
        sizes = {dataset: train_sizes(plan.config, dataset) for dataset in exp["datasets"]}
        cost.unsized = [dataset for dataset, size in sizes.items() if size is None]
        for method in exp["methods"]:
            rate, _ = used[name, method] = rate_for(rates, gpu, model, method, precision_of(exp["recipe"]))
            packs = tune_jobs[name, method]
            for dataset, size in sizes.items():
                # The method's tune jobs (each training its pack's grid points) on the dataset and on each of its
                # tuning folds.
                tuned_sets = len(plan.train.tuning_sets(dataset))
                tune_runs = tuned_sets * sum(len(gps) for gps in packs.values())
                final_runs = len(exp["seeds"])  # one final job per seed
                cost.tune_jobs += tuned_sets * len(packs)
                cost.final_jobs += final_runs
                cost.tune_runs += tune_runs
                cost.final_runs += final_runs
                if size is not None:
                    tune_images, final_images = tune_runs * epochs * size[0], final_runs * epochs * size[1]
                    cost.images += tune_images + final_images
                    hours = (tune_images * gpus["tune"] + final_images * gpus["final"]) / rate.images_per_second / 3600
                    cost.gpu_hours += hours
                    cost.method_hours[method] = cost.method_hours.get(method, 0.0) + hours
        costs.append(cost)
    named = next((r.gpu for r in rates if r.gpu.lower() == gpu.lower()), gpu)  # as the table spells it
    return Estimate(plan.config["study"], named, costs, len(plan.layout.other_benchmarks()), used)


def render(est: Estimate, plan: Plan) -> str:
    """The estimate as a plain-text table, then the rates, fallbacks and sizes it rests on."""
    head = ("experiment", "tune jobs", "final jobs", "runs", "images trained", f"{est.gpu} GPU-hours")

    def cells(name: str, tune: int, final: int, runs: int, images: int, hours: float) -> tuple[str, ...]:
        # Two decimals under an hour, so a small study's minutes show (0.23 h: 14 minutes).
        return (name, f"{tune:,}", f"{final:,}", f"{runs:,}", f"{images:,}", f"{hours:,.{1 if hours >= 1 else 2}f}")

    rows = [cells(e.experiment, e.tune_jobs, e.final_jobs, e.runs, e.images, e.gpu_hours) for e in est.experiments]
    sums = [sum(getattr(e, k) for e in est.experiments) for k in ("tune_jobs", "final_jobs", "runs", "images")]
    total = cells("total", *sums, sum(e.gpu_hours for e in est.experiments))
    widths = [max(len(r[i]) for r in (head, *rows, total)) for i in range(len(head))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    rule = "  ".join("-" * w for w in widths)
    out = [f"Cost estimate of study {est.study!r} on {est.gpu} (throughput: peftstudy/tables/{THROUGHPUT_TABLE})"]
    out += [line(head), rule, *map(line, rows), rule, line(total), ""]
    out.append(
        f"Slurm jobs: {est.training_jobs + est.other_jobs:,} = {sums[0]:,} tune + {sums[1]:,} final"
        f" + {est.other_jobs} robustness/pretraining; data preparation jobs (a few per dataset) come on top."
    )
    out.append(
        "GPU-hours: training images / the method's rate x the GPUs a job asks for, one run at a time, every run to"
        " its last epoch (early stopping ends some sooner); evaluation, data preparation and robustness jobs not"
        " included."
    )
    out.append("Rates used (training images/s of one run alone):")
    uses: dict[tuple[Rate, str], list[str]] = {}
    for (experiment, method), chosen in est.rates.items():
        uses.setdefault(chosen, []).append(f"{experiment}/{method}")
    for (rate, note), runs in uses.items():
        what = f"{rate.method}, {rate.model}, {rate.precision}"
        out.append(f"  {rate.images_per_second:>7,.0f} ({what}) {note}: {summarise(runs)}")
    out.append("Where the measured rates come from:")
    for rate in dict.fromkeys(rate for rate, _ in uses):
        out.append(f"  {rate.method}: {rate.source}")
    out.append("Training images per run (tune / final):")
    bases: dict[str, list[str]] = {}
    for dataset in dict.fromkeys(d for exp in plan.experiments.values() for d in exp["datasets"]):
        size = train_sizes(plan.config, dataset)
        if size is not None:
            bases.setdefault(size[2], []).append(f"{dataset} {size[0]:,}/{size[1]:,}")
    for basis, datasets in bases.items():
        out.append(f"  {basis}: {summarise(datasets)}")
    for e in est.experiments:
        if e.unsized:
            out.append(f"{e.experiment}: size unknown for {', '.join(e.unsized)}: their images and hours not counted")
    cpu = [
        f"{name} {phase}" for name in plan.experiments for phase in ("tune", "final")
        if not plan.resource_spec(phase, name)["gpu"]
    ]  # fmt: skip
    if cpu:
        out.append(f"No GPU asked for (resources.<phase>.gpu: 0), so no GPU-hours: {summarise(cpu)}")
    return "\n".join(out)


def report_context(plan: Plan, gpu: str = DEFAULT_GPU, rates: Sequence[Rate] | None = None) -> dict[str, Any]:
    """What the report needs to set the GPU-hours spent beside the estimate: the GPUs each training job asks for
    (tune and final by experiment; robustness and pretraining by phase) and the estimated GPU-hours per
    (experiment, method) on `gpu`."""
    est = estimate(plan, gpu, read_rates() if rates is None else rates)
    return {
        "gpu": est.gpu,
        "gpus": {
            name: {phase: plan.resource_spec(phase, name)["gpu"] for phase in ("tune", "final")}
            for name in plan.experiments
        },
        "phase_gpus": {
            "robustness": plan.resource_spec("robustness", plan.analysis.robustness_experiment())["gpu"],
            "pretrain": plan.resource_spec("pretrain", None)["gpu"],
        },
        "estimated_gpu_hours": {e.experiment: e.method_hours for e in est.experiments},
    }


# Disk (the doctor's free-space check). The test split of each VTAB-1K task, as VPT and NOAH cite them
# (docs/protocol.md §D.1).
VTAB_1K_TEST_SIZES = {
    **{"cifar": 10_000, "caltech101": 6_084, "dtd": 1_880, "oxford_flowers102": 6_149, "oxford_iiit_pet": 3_669},
    **{"svhn": 26_032, "sun397": 21_750, "patch_camelyon": 32_768, "eurosat": 5_400, "resisc45": 6_300},
    **{"diabetic_retinopathy": 42_670, "clevr_count": 15_000, "clevr_dist": 15_000, "dmlab": 22_735, "kitti": 711},
    **{"dsprites_loc": 73_728, "dsprites_ori": 73_728, "smallnorb_azi": 12_150, "smallnorb_ele": 12_150},
}
# A backbone whose weights are not on disk yet is taken to be ViT-B's size: 86 M float32 parameters.
VIT_B_BYTES = 86_000_000 * 4
# A PEFT method's trained tensors, at most this share of the backbone's (the paper's largest grids train ~2 M of
# ViT-B's 86 M parameters: LoRA+adapter at r 64); full fine-tuning saves them all.
PEFT_SHARE = 0.03
# A run's epoch checkpoint (train.resume) holds its trained tensors and AdamW's two moments of each.
CHECKPOINT_COPIES = 3


@dataclass
class DiskNeed:
    """The bytes a study writes under results/, by kind, and what the estimate could not size."""

    items: dict[str, int]
    unsized: list[str]

    @property
    def total(self) -> int:
        return sum(self.items.values())


def disk_need(plan: Plan, backbone_bytes: Mapping[str, int] | None = None, jobs_at_once: int = 1) -> DiskNeed:
    """What a study's outputs take on disk, from the plan: the uint8 caches of every split it trains or tests on,
    each final run's logits and trained tensors, and the epoch checkpoints of `jobs_at_once` training jobs (kept
    while a run trains, removed when it ends). `backbone_bytes`: the weights file's size of each experiment's
    backbone where it is known (else ViT-B's). Downloads (archives, TFDS, weights) are not counted: their sizes
    are the sources'. Small files (metrics, tables, the report) are left out."""
    known = backbone_bytes or {}
    items = {"split caches": 0, "final logits": 0, "final trained tensors": 0, "epoch checkpoints in flight": 0}
    unsized: list[str] = []
    splits: dict[str, tuple[int, ...]] = {}
    for dataset in dict.fromkeys(
        [*plan.report.report_datasets(), *(f for d in plan.report.report_datasets() for f in plan.train.tuning_sets(d))]
    ):
        spec, side = plan.datasets[dataset], plan.data.cache_size(dataset)
        given = sources.of(spec).split_sizes(plan.config, dataset)
        if given is not None:
            tune_train, trainval, test = given
        else:
            size = train_sizes(plan.config, dataset)
            test = VTAB_1K_TEST_SIZES.get(study.vtab_task(spec) or "")
            if size is None or test is None:
                unsized.append(dataset)
                continue
            tune_train, trainval = size[0], size[1]
        if not side:  # kept at its native size: unknown here
            unsized.append(dataset)
            continue
        # train, val, train+val and test, each its own cache
        splits[dataset] = (tune_train, trainval - tune_train, trainval, test)
        items["split caches"] += sum(splits[dataset]) * side * side * 3
    checkpoints = []  # each training job's: its runs' epoch checkpoints
    for name, exp in plan.experiments.items():
        weights = known.get(name, VIT_B_BYTES)
        for method in exp["methods"]:
            trained = weights if method == "full" else int(weights * PEFT_SHARE)
            packs = plan.layout.tune_jobs[name, method].values()
            for dataset in exp["datasets"]:
                runs = len(exp["seeds"])  # one final job per seed
                checkpoints += [CHECKPOINT_COPIES * trained] * runs
                checkpoints += [CHECKPOINT_COPIES * trained * len(gps) for gps in packs] * len(
                    plan.train.tuning_sets(dataset)
                )
                if dataset in splits:
                    items["final logits"] += runs * splits[dataset][3] * plan.datasets[dataset]["classes"] * 4
                    items["final trained tensors"] += runs * trained
    # At worst the largest jobs run at once.
    items["epoch checkpoints in flight"] = sum(sorted(checkpoints, reverse=True)[:jobs_at_once])
    return DiskNeed(items, unsized)


def summarise(names: list[str], shown: int = 6) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def run(args: Any) -> None:
    """`peftstudy estimate`: print the estimate of a study config (no job is run, nothing is written)."""
    try:
        plan = Plan.of(load_config(args.configfile))
        print(render(estimate(plan, args.gpu or DEFAULT_GPU, read_rates()), plan))
    except (OSError, ValueError) as err:  # a config error names its key, an unknown GPU the measured ones
        raise SystemExit(f"peftstudy estimate: {err}") from None
