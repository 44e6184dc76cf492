# Final runs: the selected grid point retrained on train+val, test evaluated once, after the last epoch.
# An experiment with runs_per_job.final > 1 trains that many seeds per process (one rule per seed pack).


rule final:
    """One seed of the selected grid point."""
    input:
        unpack(get_final_inputs),
    output:
        metrics=f"{R}/{{experiment}}/{{dataset}}/{{method}}/final/{{gp}}/seed{{seed}}/metrics.json",
        logits=f"{R}/{{experiment}}/{{dataset}}/{{method}}/final/{{gp}}/seed{{seed}}/logits.npz",
        peft=f"{R}/{{experiment}}/{{dataset}}/{{method}}/final/{{gp}}/seed{{seed}}/peft.safetensors",
    log:
        f"{R}/{{experiment}}/{{dataset}}/{{method}}/final/{{gp}}/seed{{seed}}/log.txt",
    benchmark:
        f"{R}/{{experiment}}/{{dataset}}/{{method}}/final/{{gp}}/seed{{seed}}/benchmark.tsv"
    wildcard_constraints:
        experiment=only(experiments_packing("final", packed=False)),
    conda:
        "../../envs/train.yaml"
    threads: config["threads"]
    resources:
        **job_resources("final"),
    params:
        hp=lambda wc: as_json(get_hp(wc)),
        recipe=lambda wc: as_json(EXPERIMENTS[wc.experiment]["recipe"]),
        backbone=lambda wc: get_backbone(wc.experiment),
        seeds=lambda wc: wc.seed,
        device=config["device"],
        resume=get_resume_dir,
    shell:
        FINAL_SHELL


for pack_experiment in experiments_packing("final", packed=True):
    for seeds in seed_packs(pack_experiment):
        final_dir = f"{R}/{{experiment}}/{{dataset}}/{{method}}/final/{{gp}}"
        seeds_dir = f"{final_dir}/seeds-{'-'.join(map(str, seeds))}"

        rule:
            name:
                f"final_{pack_experiment}_seeds_{'_'.join(map(str, seeds))}"
            input:
                unpack(get_final_inputs),
            output:
                metrics=[f"{final_dir}/seed{s}/metrics.json" for s in seeds],
                logits=[f"{final_dir}/seed{s}/logits.npz" for s in seeds],
                peft=[f"{final_dir}/seed{s}/peft.safetensors" for s in seeds],
            log:
                f"{seeds_dir}/log.txt",
            benchmark:
                f"{seeds_dir}/benchmark.tsv"
            wildcard_constraints:
                experiment=only([pack_experiment]),
            conda:
                "../../envs/train.yaml"
            threads: config["threads"]
            resources:
                **job_resources("final", pack_experiment),
            params:
                hp=lambda wc: as_json(get_hp(wc)),
                recipe=as_json(EXPERIMENTS[pack_experiment]["recipe"]),
                backbone=get_backbone(pack_experiment),
                seeds=" ".join(map(str, seeds)),
                device=config["device"],
                resume=get_resume_dir,
            shell:
                FINAL_SHELL


rule collect:
    """Record the selected finals of one (experiment, dataset, method), with their checksums."""
    input:
        get_selected_finals,
        selected=f"{R}/{{experiment}}/{{dataset}}/{{method}}/selected.json",
    output:
        record=report(
            f"{R}/{{experiment}}/{{dataset}}/{{method}}/final.json",
            caption="../../report/captions/final.rst",
            category="Final runs",
            subcategory="{experiment}",
        ),
    log:
        f"{R}/{{experiment}}/{{dataset}}/{{method}}/collect.log",
    conda:
        "../../envs/train.yaml"
    params:
        metrics=lambda wc, input: [p for p in input if p.endswith("metrics.json")],
    shell:
        "peftstudy collect --selected {input.selected} --metrics {params.metrics} --out {output.record}"
        " --experiment {wildcards.experiment} --dataset {wildcards.dataset} --method {wildcards.method}"
        " > {log} 2>&1"
