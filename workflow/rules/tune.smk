# Tune jobs: train on train, score on val. `{pack}` is one grid point's id, or pack<n>-<i> for the several points
# of one (method, dataset) that an experiment with runs_per_job.tune > 1 trains in one process; either way the
# job writes one metrics.json holding each of its points' results (the plan says which points a pack holds).


rule tune:
    """Grid points of one method on one dataset: train on train, score on val."""
    input:
        unpack(get_tune_inputs),
    output:
        metrics=LAYOUT.tune_file(*RUN, "{pack}", "metrics.json"),
    log:
        LAYOUT.tune_file(*RUN, "{pack}", "log.txt"),
    benchmark:
        LAYOUT.tune_file(*RUN, "{pack}", "benchmark.tsv")
    conda:
        "../../envs/train.yaml"
    threads: PLAN.train.threads
    resources:
        **job_resources("tune"),
    params:
        spec=get_tune_spec,
        code=get_code,
    shell:
        RUN_SPEC_SHELL
