import json
import os
import re

from peftstudy import config as study
from peftstudy import io as study_io
from peftstudy import methods as method_registry
from peftstudy.results import Layout
from peftstudy.select import chosen_gp

# A study may include others (studies/paper.yaml): merged here, before anything reads the config.
if "include" in config:
    composed = study.compose(config)
    config.clear()
    config.update(composed)
study_io.validate_config(config)  # the key path first, not the whole schema
study.check(config)

LAYOUT = Layout(config)
R = LAYOUT.root
GRIDS = study.grids(config)
TUNE_PACKS = study.tune_packs(config)
CONFIG_HASH = study.config_hash(config)
EXPERIMENTS = config["experiments"]
DATASETS = config["datasets"]
ARCHIVES = config.get("archives", {})
ROBUSTNESS = config.get("robustness")
BACKBONES = config.get("backbones", {})
# The study's backbone and the other named ones: each gets its fetch (and CLIP's zero-shot head) rule.
ALL_BACKBONES = {"backbone": config["backbone"], **BACKBONES}
JOB_DEFAULTS = {"mem_mb": 4000, "runtime": 60, "gpu": 0}


def job_resources(kind, experiment=None):
    """A job's resources from `resources.<kind>` of the study config, overridden by the experiment's own
    (`experiments.<name>.resources.<kind>`; a CLIP run needs more than a VTAB one): what a cluster job asks for.
    Without a fixed experiment (one rule serving several) memory and runtime follow the job's wildcards; the
    GPU count is the most any of them asks (left out when 0, so that CPU studies send no GPU request).
    """

    def spec(name):
        own = EXPERIMENTS[name].get("resources", {}).get(kind, {}) if name else {}
        return {**JOB_DEFAULTS, **config.get("resources", {}).get(kind, {}), **own}

    if experiment is not None or kind not in ("tune", "final"):
        fixed = spec(experiment)
        return {k: v for k, v in fixed.items() if k != "gpu" or v}
    gpu = max(spec(name)["gpu"] for name in EXPERIMENTS)
    return {
        "mem_mb": lambda wc: spec(wc.experiment)["mem_mb"],
        "runtime": lambda wc: spec(wc.experiment)["runtime"],
        **({"gpu": gpu} if gpu else {}),
    }


TABLES = (
    "tune",
    "selection_vs_authors",
    "final",
    "results",
    "vtab",
    "group_means",
    "datasets",
    "experiments",
    "compute",
    "ensembles",
    "seed_ensembles",
    "agreement",
    "triples",
    "venn",
    "confidence",
    "ood",
    "wise",
)
# The authors' numbers (STUDY.md H), transcribed with their sources; copied beside our tables.
AUTHORS = ("vtab1k", "vtab1k_selection", "reruns", "manyshot", "clip_ood", "wise")


wildcard_constraints:
    experiment="|".join(EXPERIMENTS),
    dataset="|".join(sorted(DATASETS, key=len, reverse=True)),
    method="|".join(method_registry.names()),
    gp="[0-9a-f]{8}",
    seed=r"\d+",
    split="train|val|trainval|test",


TUNE_SHELL = (
    "peftstudy tune --experiment {wildcards.experiment} --dataset {wildcards.dataset}"
    " --method {wildcards.method} --points {params.points} --recipe {params.recipe}"
    " --backbone {params.backbone} --seed {params.seed} --train {input.train} --val {input.val}"
    " --manifest {input.manifest} --threads {threads} --resume-dir {params.resume}"
    " --device {params.device} --out {output.metrics} > {log} 2>&1"
)
FINAL_SHELL = (
    "peftstudy final --experiment {wildcards.experiment} --dataset {wildcards.dataset}"
    " --method {wildcards.method} --gp {wildcards.gp} --hp {params.hp} --recipe {params.recipe}"
    " --backbone {params.backbone} --seed {params.seeds} --train {input.train} --test {input.test}"
    " --manifest {input.manifest} --threads {threads} --resume-dir {params.resume}"
    " --device {params.device} --out-metrics {output.metrics} --out-logits {output.logits}"
    " --out-weights {output.peft} > {log} 2>&1"
)


def get_resume_dir(wildcards):
    """Epoch checkpoints of a (experiment, dataset, method)'s runs: outside the declared outputs, so a failed
    or preempted job's retry finds them (Snakemake removes a failed job's outputs, not these).
    """
    return f"{R}/resume/{wildcards.experiment}/{wildcards.dataset}/{wildcards.method}"


def only(names):
    """A wildcard constraint matching exactly these names (none: matches nothing)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def experiments_packing(phase, packed):
    """Experiments whose `phase` jobs run several runs per process (packed) or one (not packed)."""
    return [
        name
        for name, exp in EXPERIMENTS.items()
        if (study.runs_per_job(exp, phase) > 1) == packed
    ]


def seed_packs(experiment):
    exp = EXPERIMENTS[experiment]
    return study.chunks(exp["seeds"], study.runs_per_job(exp, "final"))


def as_json(obj):
    """A JSON argument for the shell: single-quoted, so JSON never needs escaping."""
    text = json.dumps(obj, sort_keys=True)
    if "'" in text:
        raise ValueError(
            f"a quote in a config value cannot be passed to the shell: {text}"
        )
    return f"'{text}'"


def backbone_spec(experiment):
    """The backbone an experiment fine-tunes: its own (`backbone: <name>` under `backbones`) or the study's."""
    name = EXPERIMENTS[experiment].get("backbone")
    return config["backbones"][name] if name else config["backbone"]


def get_backbone_weights(experiment):
    spec = backbone_spec(experiment)
    if spec["pretrain"]:
        return f"{R}/pretrain/backbone.safetensors"
    return spec["weights"]


def get_backbone(experiment):
    """The --backbone argument: what to build and which weights to load (checked against sha256)."""
    spec = backbone_spec(experiment)
    head = spec.get("zero_shot_head")
    return as_json(
        {
            "arch": spec["arch"],
            "weights": get_backbone_weights(experiment),
            "sha256": None if spec["pretrain"] else spec["sha256"],
            "keep_head": EXPERIMENTS[experiment]["head"] == "pretrained",
            **({"head": head["file"], "head_sha256": None} if head else {}),
        }
    )


def get_backbone_files(experiment):
    """The files a training job of `experiment` reads besides data: weights, and CLIP's zero-shot head."""
    spec = backbone_spec(experiment)
    files = {"weights": get_backbone_weights(experiment)}
    if "zero_shot_head" in spec:
        files["head"] = spec["zero_shot_head"]["file"]
    return files


def get_method_module(wildcards):
    """A method's own module is an input of its jobs: editing it reruns exactly them."""
    return os.path.relpath(method_registry.source_file(wildcards.method))


def get_points(experiment, method, gps):
    """The --points argument of a tune job: its grid points, in order."""
    grid = GRIDS[experiment, method]
    return as_json([{"gp": gp, "hp": grid[gp]} for gp in gps])


def get_hp(wildcards):
    try:
        return GRIDS[wildcards.experiment, wildcards.method][wildcards.gp]
    except KeyError:
        raise ValueError(
            f"grid point {wildcards.gp} is not in the grid of {wildcards.method} in experiment "
            f"{wildcards.experiment}; request only points of the current config"
        ) from None


data = LAYOUT.data
manifest = LAYOUT.manifest


def get_source_dir(dataset):
    """The dataset's folder in the processed-VTAB layout."""
    spec = DATASETS[dataset]
    if spec["source"] in ("synthetic", "manual", "manyshot", "tfds"):
        return f"{R}/data/{dataset}/source"
    if spec["source"] == "archive":
        return f"resources/data/{spec['archive']}/{spec['folder']}"
    return spec["path"]


def get_source_inputs(wildcards):
    """What a dataset's folder comes from: a rule's output (generated, extracted) or a local folder."""
    spec = DATASETS[wildcards.dataset]
    if spec["source"] == "archive":
        return {
            "source": f"resources/data/{spec['archive']}",
            "checksum": f"resources/archives/{spec['archive']}.sha256",
        }
    return {"source": get_source_dir(wildcards.dataset)}


def get_manyshot_inputs(wildcards):
    spec = DATASETS[wildcards.dataset]
    return {
        "archive": f"resources/data/{spec['archive']}",
        "checksum": f"resources/archives/{spec['archive']}.sha256",
        "lists": f"resources/lists/petl_vision/{spec['kind']}-{spec['subset']}",
        "code": "src/peftstudy/data/manyshot.py",
    }


def get_source_record(dataset):
    """Where a dataset came from, for its manifest (and so every result's provenance)."""
    spec = DATASETS[dataset]
    if spec["source"] == "archive":
        archive = ARCHIVES[spec["archive"]]
        return {
            "source": "archive",
            "archive": spec["archive"],
            "url": archive["url"],
            "folder": spec["folder"],
        }
    return {"source": "local", "path": spec["path"]}


def get_tune_inputs(wildcards):
    """Train and val only: no tune job can see the test split."""
    return {
        "train": data(wildcards.dataset, "train"),
        "val": data(wildcards.dataset, "val"),
        "manifest": manifest(wildcards.dataset),
        **get_backbone_files(wildcards.experiment),
        "code": get_method_module(wildcards),
    }


def get_final_inputs(wildcards):
    return {
        "train": data(wildcards.dataset, "trainval"),
        "test": data(wildcards.dataset, "test"),
        "manifest": manifest(wildcards.dataset),
        **get_backbone_files(wildcards.experiment),
        "code": get_method_module(wildcards),
    }


def get_tune_metrics(wildcards):
    """The grid's tune results on the dataset and on each of its tuning folds (averaged by select)."""
    gps = list(GRIDS[wildcards.experiment, wildcards.method])
    folds = [wildcards.dataset, *DATASETS[wildcards.dataset].get("folds", [])]
    return [
        path
        for fold in folds
        for path in LAYOUT.tune_metrics(
            wildcards.experiment, fold, wildcards.method, gps
        )
    ]


def get_grid_order(wildcards):
    return as_json(list(GRIDS[wildcards.experiment, wildcards.method]))


def run_of(wildcards):
    return wildcards.experiment, wildcards.dataset, wildcards.method


def selected_gp(experiment, dataset, method):
    """The grid point `select` chose: known once that checkpoint has run; None when every one diverged."""
    run = dict(experiment=experiment, dataset=dataset, method=method)
    return chosen_gp(checkpoints.select.get(**run).output.selected)


def selected_finals(experiment, dataset, method):
    """The final runs (every seed) of the selected grid point: none when every grid point diverged."""
    gp = selected_gp(experiment, dataset, method)
    return LAYOUT.final_files(experiment, dataset, method, gp) if gp else []


def get_selected_finals(wildcards):
    """Each collect job resolves its own checkpoint: Snakemake stops an input function at its first
    unresolved checkpoint, so one function resolving many would serialise the selections.
    """
    return selected_finals(*run_of(wildcards))


def get_ensemble_inputs(wildcards):
    methods = EXPERIMENTS[wildcards.experiment]["methods"]
    return [
        LAYOUT.final_record(wildcards.experiment, wildcards.dataset, m) for m in methods
    ]


def get_analysis_methods(wildcards):
    """The methods whose pairs and triples are ensembled: analysis.methods, else all."""
    experiment = EXPERIMENTS[wildcards.experiment]
    chosen = config.get("analysis", {}).get("methods", {})
    return " ".join(chosen.get(wildcards.experiment, experiment["methods"]))


def robustness_sets():
    """The robustness test sets: the in-distribution one first, then the shifted ones."""
    return [ROBUSTNESS["dataset"], *ROBUSTNESS["ood"]]


def get_robustness_inputs(wildcards):
    return {
        "final": LAYOUT.final_record(
            ROBUSTNESS["experiment"], ROBUSTNESS["dataset"], wildcards.method
        ),
        **get_backbone_files(ROBUSTNESS["experiment"]),
        "code": get_method_module(wildcards),
        **{name: data(name, "test") for name in robustness_sets()},
    }


def get_class_subsets():
    """The robustness test sets that cover part of the label space, with their classes (or mask's name)."""
    return {
        n: DATASETS[n]["class_subset"]
        for n in robustness_sets()
        if "class_subset" in DATASETS[n]
    }


def get_table_inputs(wildcards):
    return {
        "tune": LAYOUT.tune_summaries(),
        "finals": LAYOUT.final_records(),
        "analysis": LAYOUT.analysis_outputs(),
        "robustness": LAYOUT.robustness_outputs(),
        "manifests": [manifest(d) for d in get_report_datasets()],
        "authors": [f"report/data/authors_{name}.csv" for name in AUTHORS],
        "benchmarks": [*LAYOUT.tune_benchmarks(), *LAYOUT.other_benchmarks()],
    }


def get_final_benchmarks(wildcards):
    """Apart from get_table_inputs: the paths depend on the selections, and a named input of its own keeps
    the rule's other inputs known while a checkpoint is still pending (a dry run formats the shell command).
    """
    return [
        path
        for run in LAYOUT.runs()
        if (gp := selected_gp(*run))
        for path in LAYOUT.final_benchmarks(*run, gp)
    ]


def get_report_datasets():
    """Datasets the study trains or tests on (their manifests give the report the split sizes)."""
    names = {d for exp in EXPERIMENTS.values() for d in exp["datasets"]}
    names |= set(ROBUSTNESS["ood"]) if ROBUSTNESS else set()
    return sorted(names)


def get_final_outputs(wildcards):
    return [LAYOUT.report(), *LAYOUT.final_records()]


def get_all_selected_finals(wildcards):
    """Every selected final, asked for by the target itself: Snakemake rebuilds a deleted intermediate only
    when the target asks for it (CHECKPOINTS.md). Kept apart from get_final_outputs because this function
    stops at the first selection not yet made; the collect jobs meanwhile run the others in parallel.
    """
    return [path for run in LAYOUT.runs() for path in selected_finals(*run)]
