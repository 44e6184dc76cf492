rule pretrain:
    """Pretrain the backbone from scratch; runs only when backbone.pretrain is true."""
    input:
        train=lambda wc: LAYOUT.data(config["pretrain"]["dataset"], "train"),
        val=lambda wc: LAYOUT.data(config["pretrain"]["dataset"], "val"),
    output:
        weights=LAYOUT.pretrain_file("backbone.safetensors"),
        metrics=LAYOUT.pretrain_file("metrics.json"),
    log:
        LAYOUT.pretrain_file("log.txt"),
    benchmark:
        LAYOUT.pretrain_file("benchmark.tsv")
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
