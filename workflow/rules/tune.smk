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
    conda:
        "../../envs/train.yaml"
    threads: config["threads"]
    resources:
        **RESOURCES,
    params:
        hp=lambda wc: as_json(get_hp(wc)),
        recipe=lambda wc: as_json(EXPERIMENTS[wc.experiment]["recipe"]),
        backbone=lambda wc: get_backbone(wc.experiment),
        seed=config["seed"],
        device=config["device"],
    shell:
        "peftstudy tune --experiment {wildcards.experiment} --dataset {wildcards.dataset}"
        " --method {wildcards.method} --gp {wildcards.gp} --hp {params.hp} --recipe {params.recipe}"
        " --backbone {params.backbone} --seed {params.seed} --train {input.train} --val {input.val}"
        " --manifest {input.manifest} --threads {threads}"
        " --device {params.device} --out {output.metrics} > {log} 2>&1"
