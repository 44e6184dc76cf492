rule robustness:
    """One method's finals on the in-distribution and shifted test sets, and its WiSE curve."""
    input:
        unpack(get_robustness_inputs),
    output:
        ood=report(
            f"{R}/robustness/{{method}}/ood.json",
            caption="../../report/captions/robustness.rst",
            category="Robustness",
        ),
        wise=report(
            f"{R}/robustness/{{method}}/wise.json",
            caption="../../report/captions/robustness.rst",
            category="Robustness",
        ),
    log:
        f"{R}/robustness/{{method}}/log.txt",
    benchmark:
        f"{R}/robustness/{{method}}/benchmark.tsv"
    conda:
        "../../envs/train.yaml"
    threads: config["threads"]
    resources:
        **job_resources("robustness", ROBUSTNESS and ROBUSTNESS["experiment"]),
    params:
        backbone=lambda wc: get_backbone(ROBUSTNESS["experiment"]),
        sets=lambda wc: " ".join(
            f"{name}={data(name, 'test')}" for name in robustness_sets()
        ),
        alphas=lambda wc: as_json(ROBUSTNESS["alphas"]),
        class_subsets=lambda wc: as_json(get_class_subsets()),
        device=config["device"],
    shell:
        "peftstudy robustness --method {wildcards.method} --backbone {params.backbone}"
        " --final {input.final} --eval {params.sets} --alphas {params.alphas} --threads {threads}"
        " --class-subsets {params.class_subsets}"
        " --device {params.device}"
        " --out-ood {output.ood} --out-wise {output.wise} > {log} 2>&1"
