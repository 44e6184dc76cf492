# Final runs: the selected grid point retrained on train+val, test evaluated once, after the last epoch.


rule final:
    """One seed of the selected grid point."""
    input:
        unpack(get_final_inputs),
    output:
        metrics=LAYOUT.final_file(*RUN, "{gp}", "{seed}", FINAL.metrics),
        logits=LAYOUT.final_file(*RUN, "{gp}", "{seed}", FINAL.logits),
        peft=LAYOUT.final_file(*RUN, "{gp}", "{seed}", FINAL.peft),
    log:
        LAYOUT.final_file(*RUN, "{gp}", "{seed}", "log.txt"),
    benchmark:
        LAYOUT.final_file(*RUN, "{gp}", "{seed}", "benchmark.tsv")
    conda:
        "../../envs/train.yaml"
    threads: PLAN.train.threads
    resources:
        **job_resources("final"),
    params:
        spec=get_final_spec,
        code=get_code,
    shell:
        RUN_SPEC_SHELL


rule collect:
    """Record the selected finals of one (experiment, dataset, method), with their checksums."""
    input:
        get_selected_finals,
    output:
        record=report(
            LAYOUT.final_record(*RUN),
            caption="../../report/captions/final.rst",
            category="Final runs",
            subcategory="{experiment}",
        ),
    log:
        LAYOUT.method_file(*RUN, "collect.log"),
    conda:
        "../../envs/train.yaml"
    params:
        spec=get_collect_spec,
    shell:
        "peftstudy run {params.spec:q} > {log} 2>&1"
