rule final:
    """The selected grid point retrained on train+val; test evaluated once, after the last epoch."""
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
    conda:
        "../../envs/train.yaml"
    threads: config["threads"]
    resources:
        **RESOURCES,
    params:
        hp=lambda wc: as_json(get_hp(wc)),
        recipe=lambda wc: as_json(EXPERIMENTS[wc.experiment]["recipe"]),
        backbone=lambda wc: get_backbone(wc.experiment),
        device=config["device"],
    shell:
        "peftstudy final --experiment {wildcards.experiment} --dataset {wildcards.dataset}"
        " --method {wildcards.method} --gp {wildcards.gp} --hp {params.hp} --recipe {params.recipe}"
        " --backbone {params.backbone} --seed {wildcards.seed} --train {input.train} --test {input.test}"
        " --manifest {input.manifest} --threads {threads}"
        " --device {params.device} --out-metrics {output.metrics} --out-logits {output.logits}"
        " --out-weights {output.peft} > {log} 2>&1"


rule collect:
    """Record the selected finals of one (experiment, dataset, method), with their checksums."""
    input:
        get_selected_finals,
    output:
        record=f"{R}/{{experiment}}/{{dataset}}/{{method}}/final.json",
    log:
        f"{R}/{{experiment}}/{{dataset}}/{{method}}/collect.log",
    conda:
        "../../envs/train.yaml"
    params:
        metrics=lambda wc, input: [p for p in input if p.endswith("metrics.json")],
    shell:
        "peftstudy collect --metrics {params.metrics} --out {output.record} > {log} 2>&1"
