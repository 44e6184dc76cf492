# Tune jobs: train on train, score on val. An experiment with runs_per_job.tune > 1 trains that many grid
# points of one (method, dataset) per process: one rule per such pack, its outputs the same per-point
# metrics.json files (the layout does not depend on packing). The others run one point per job.


rule tune:
    """One grid point of one method on one dataset: train on train, score on val."""
    input:
        unpack(get_tune_inputs),
    output:
        metrics=f"{R}/{{experiment}}/{{dataset}}/{{method}}/tune/{{gp}}/metrics.json",
    log:
        f"{R}/{{experiment}}/{{dataset}}/{{method}}/tune/{{gp}}/log.txt",
    benchmark:
        f"{R}/{{experiment}}/{{dataset}}/{{method}}/tune/{{gp}}/benchmark.tsv"
    wildcard_constraints:
        experiment=only(experiments_packing("tune", packed=False)),
    conda:
        "../../envs/train.yaml"
    threads: config["threads"]
    resources:
        **job_resources("tune"),
    params:
        points=lambda wc: get_points(wc.experiment, wc.method, [wc.gp]),
        recipe=lambda wc: as_json(EXPERIMENTS[wc.experiment]["recipe"]),
        backbone=lambda wc: get_backbone(wc.experiment),
        seed=config["seed"],
        device=config["device"],
        resume=get_resume_dir,
    shell:
        TUNE_SHELL


for (pack_experiment, pack_method), packs in TUNE_PACKS.items():
    for pack in packs:
        pack_dir = (
            f"{R}/{{experiment}}/{{dataset}}/{{method}}/tune/pack-{study.pack_id(pack)}"
        )

        rule:
            name:
                f"tune_{pack_experiment}_{pack_method}_{study.pack_id(pack)}"
            input:
                unpack(get_tune_inputs),
            output:
                metrics=[
                    f"{R}/{{experiment}}/{{dataset}}/{{method}}/tune/{gp}/metrics.json"
                    for gp in pack
                ],
            log:
                f"{pack_dir}/log.txt",
            benchmark:
                f"{pack_dir}/benchmark.tsv"
            wildcard_constraints:
                experiment=only([pack_experiment]),
                method=only([pack_method]),
            conda:
                "../../envs/train.yaml"
            threads: config["threads"]
            resources:
                **job_resources("tune", pack_experiment),
            params:
                points=get_points(pack_experiment, pack_method, pack),
                recipe=as_json(EXPERIMENTS[pack_experiment]["recipe"]),
                backbone=get_backbone(pack_experiment),
                seed=config["seed"],
                device=config["device"],
                resume=get_resume_dir,
            shell:
                TUNE_SHELL
