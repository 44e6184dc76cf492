rule pretrain:
    """Pretrain the backbone from scratch; runs only when backbone.pretrain is true."""
    input:
        train=lambda wc: data(config["pretrain"]["dataset"], "train"),
        val=lambda wc: data(config["pretrain"]["dataset"], "val"),
    output:
        weights=f"{R}/pretrain/backbone.safetensors",
        metrics=f"{R}/pretrain/metrics.json",
    log:
        f"{R}/pretrain/log.txt",
    benchmark:
        f"{R}/pretrain/benchmark.tsv"
    conda:
        "../../envs/train.yaml"
    threads: config["threads"]
    resources:
        **job_resources("pretrain"),
    params:
        arch=config["backbone"]["arch"],
        recipe=lambda wc: as_json(config["pretrain"]["recipe"]),
        lr=lambda wc: config["pretrain"]["lr"],
        wd=lambda wc: config["pretrain"]["wd"],
        seed=config["seed"],
        device=config["device"],
    shell:
        "peftstudy pretrain --arch {params.arch} --train {input.train} --val {input.val}"
        " --recipe {params.recipe} --lr {params.lr} --wd {params.wd} --seed {params.seed}"
        " --threads {threads} --device {params.device}"
        " --out {output.weights} --metrics {output.metrics} > {log} 2>&1"
