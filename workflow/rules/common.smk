import functools

from peftstudy import io as study_io
from peftstudy.plan import study
from peftstudy.plan.jobs import (
    Plan,
    only,
)
from peftstudy.plan.cost import report_context as estimated_cost
from peftstudy.plan.sources.archive import archive_checksum, extracted
from peftstudy.plan.sources.manyshot import lists_dir as manyshot_lists_dir
from peftstudy.plan.specs import FINAL, write as write_spec
from peftstudy.plan.tasks import MANYSHOT_SUBSETS
from peftstudy.select import chosen, chosen_gp

# A study may include others (studies/paper.yaml): merged here, before anything reads the config.
if "include" in config:
    composed = study.compose(config)
    config.clear()
    config.update(composed)
study_io.validate_config(config)  # the key path first, not the whole schema

# Everything the DAG computes comes from the plan (src/peftstudy/plan); the functions below only unpack wildcards.
PLAN = Plan.of(config)
LAYOUT = PLAN.layout
# Output patterns: layout methods called with the wildcards for arguments.
RUN = ("{experiment}", "{dataset}", "{method}")


wildcard_constraints:
    **PLAN.constraints(),


def job_resources(kind, experiment=None):
    """A job's resources (PLAN.resources). A tune job's runtime is per run, times the grid points it trains; where
    one rule serves every experiment, memory and runtime follow the job's experiment wildcard and the GPU count is
    the most any of them asks.
    """
    if experiment is not None or kind not in ("tune", "final"):
        return PLAN.resources(kind, experiment)
    gpu = PLAN.max_gpu(kind)
    return {
        "mem_mb": lambda wc: PLAN.resource_spec(kind, wc.experiment)["mem_mb"],
        "runtime": lambda wc: PLAN.resources(kind, wc.experiment, job_runs(kind, wc))[
            "runtime"
        ],
        **({"gpu": gpu} if gpu else {}),
    }


def job_runs(kind, wildcards):
    """The runs a job of the tune (or final) rule trains, its pack's grid points (or its one seed)."""
    if kind == "tune":
        return PLAN.train.tune_runs(
            wildcards.experiment, wildcards.method, wildcards.pack
        )
    return 1


# A job is its spec (plan.specs), one canonical JSON argument: any change of any field reruns the job.
RUN_SPEC_SHELL = "peftstudy run {params.spec:q} --threads {threads} > {log} 2>&1"


def run_of(wildcards):
    return wildcards.experiment, wildcards.dataset, wildcards.method


def tune_spec(wildcards):
    return PLAN.train.tune_spec(*run_of(wildcards), wildcards.pack)


def final_spec(wildcards):
    return PLAN.train.final_spec(*run_of(wildcards), wildcards.gp, wildcards.seed)


def get_tune_inputs(wildcards):
    return tune_spec(wildcards).inputs()


def get_tune_spec(wildcards):
    return tune_spec(wildcards).to_json()


def get_final_inputs(wildcards):
    return final_spec(wildcards).inputs()


def get_final_spec(wildcards):
    return final_spec(wildcards).to_json()


def get_code(wildcards):
    return PLAN.code_digest(wildcards.method)


def get_tune_metrics(wildcards):
    return PLAN.tune_metrics(wildcards.experiment)


def selection(experiment):
    """The experiment's selected.json: known once its checkpoint has run."""
    return checkpoints.select.get(experiment=experiment).output.selected


def selected_gp(experiment, dataset, method):
    """The grid point `select` chose for the method on the dataset; None when every one diverged. The analysis
    and tables specs take it to name the selected finals' files: the input function of each such job resolves
    the selection, so the job is planned again when the checkpoint completes.
    """
    return chosen_gp(selection(experiment), dataset, method)


def get_collect_spec(wildcards):
    """A collect job's own (dataset, method) choice is in its spec: it reruns when that entry changes, not when
    the file does."""
    entry = chosen(selection(wildcards.experiment), wildcards.dataset, wildcards.method)
    finals = selected_finals(*run_of(wildcards))
    return PLAN.analysis.collect_spec(*run_of(wildcards), entry, finals).to_json()


def selected_finals(experiment, dataset, method):
    """The final runs (every seed) of the selected grid point: none when every grid point diverged."""
    gp = selected_gp(experiment, dataset, method)
    return LAYOUT.final_files(experiment, dataset, method, gp) if gp else []


def get_selected_finals(wildcards):
    """Each collect job resolves its own experiment's checkpoint: Snakemake stops an input function at its first
    unresolved checkpoint, so one function resolving many would serialise the selections.
    """
    return selected_finals(*run_of(wildcards))


def final_benchmarks():
    """The selected finals' benchmarks, each with the job it measured (LAYOUT.final_benchmarks)."""
    return [
        job
        for run in LAYOUT.runs()
        if (gp := selected_gp(*run))
        for job in LAYOUT.final_benchmarks(*run, gp)
    ]


def get_final_benchmarks(wildcards):
    """The selected finals' benchmarks (each selection resolved): what the tables' spec waits for."""
    return [job["path"] for job in final_benchmarks()]


def get_tables_inputs(wildcards):
    """Every file the tables read: the selected finals' among them, so each selection is resolved first (the
    rule's spec file stays a named input of its own, known while a checkpoint is pending: a dry run formats the
    shell command)."""
    return tables_spec().inputs()


def write_spec_file(path, spec, log):
    """A spec handed over as a file (rules spec_file, tables_spec), and its log line: what it is, its digest."""
    write_spec(path, spec)
    with open(log, "w") as handle:
        handle.write(f"{path}: the {spec.stage} job's spec, sha256 {spec.digest()}\n")


@functools.cache
def tables_context():
    """The study's facts, and the cost estimate the report sets beside what the run spent (once)."""
    return PLAN.report.report_context() | {"cost": estimated_cost(PLAN)}


def tables_spec():
    """The tables job's spec: every training job's benchmark and the selected finals' metrics (each selection
    resolved)."""
    return PLAN.report.tables_spec(tables_context(), final_benchmarks(), selected_gp)


def get_final_outputs(wildcards):
    return [LAYOUT.report(), *LAYOUT.final_records()]


def get_all_selected_finals(wildcards):
    """Every selected final, asked for by the target itself: Snakemake rebuilds a deleted intermediate only
    when the target asks for it (docs/scale.md §5). Kept apart from get_final_outputs because this function
    stops at the first selection not yet made; the collect jobs meanwhile run the others in parallel.
    """
    return [path for run in LAYOUT.runs() for path in selected_finals(*run)]
