# Final runs: the selected grid point retrained on train+val, test evaluated once, after the last epoch.
# An experiment with runs_per_job.final > 1 trains that many seeds per process (one rule per seed pack).


rule final:
    """One seed of the selected grid point."""
    input:
        unpack(get_final_inputs),
    output:
        metrics=LAYOUT.final_file(*RUN, "{gp}", "{seed}", "metrics.json"),
        logits=LAYOUT.final_file(*RUN, "{gp}", "{seed}", "logits.npz"),
        peft=LAYOUT.final_file(*RUN, "{gp}", "{seed}", "peft.safetensors"),
    log:
        LAYOUT.final_file(*RUN, "{gp}", "{seed}", "log.txt"),
    benchmark:
        LAYOUT.final_file(*RUN, "{gp}", "{seed}", "benchmark.tsv")
    wildcard_constraints:
        experiment=only(PLAN.experiments_packing("final", packed=False)),
    conda:
        "../../envs/train.yaml"
    threads: config["threads"]
    resources:
        **job_resources("final"),
    params:
        args=get_final_args(None),
    shell:
        FINAL_SHELL


for pack_experiment in PLAN.experiments_packing("final", packed=True):
    for seeds in PLAN.seed_packs(pack_experiment):

        rule:
            name:
                f"final_{pack_experiment}_seeds_{'_'.join(map(str, seeds))}"
            input:
                unpack(get_final_inputs),
            output:
                metrics=[
                    LAYOUT.final_file(*RUN, "{gp}", s, "metrics.json") for s in seeds
                ],
                logits=[LAYOUT.final_file(*RUN, "{gp}", s, "logits.npz") for s in seeds],
                peft=[
                    LAYOUT.final_file(*RUN, "{gp}", s, "peft.safetensors")
                    for s in seeds
                ],
            log:
                LAYOUT.final_pack_file(*RUN, "{gp}", seeds, "log.txt"),
            benchmark:
                LAYOUT.final_pack_file(*RUN, "{gp}", seeds, "benchmark.tsv")
            wildcard_constraints:
                experiment=only([pack_experiment]),
            conda:
                "../../envs/train.yaml"
            threads: config["threads"]
            resources:
                **job_resources("final", pack_experiment, len(seeds)),
            params:
                args=get_final_args(" ".join(map(str, seeds))),
            shell:
                FINAL_SHELL


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
        choice=get_choice,
        metrics=lambda wc, input: [p for p in input if p.endswith("metrics.json")],
    shell:
        "peftstudy collect --choice {params.choice} --metrics {params.metrics} --out {output.record}"
        " --experiment {wildcards.experiment} --dataset {wildcards.dataset} --method {wildcards.method}"
        " > {log} 2>&1"
