rule pretrain:
    """Pretrain the backbone from scratch; runs only when backbone.pretrain is true."""
    input:
        unpack(lambda wc: PLAN.train.pretrain_spec().inputs()),
    output:
        weights=LAYOUT.pretrain_file("backbone.safetensors"),
        metrics=LAYOUT.pretrain_file("metrics.json"),
    log:
        LAYOUT.pretrain_file("log.txt"),
    benchmark:
        LAYOUT.pretrain_file("benchmark.tsv")
    conda:
        "../../envs/train.yaml"
    threads: PLAN.train.threads
    resources:
        **job_resources("pretrain"),
    params:
        spec=lambda wc: PLAN.train.pretrain_spec().to_json(),
    shell:
        RUN_SPEC_SHELL
