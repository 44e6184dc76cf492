rule robustness:
    """One method's finals on the in-distribution and shifted test sets, and its WiSE curve."""
    input:
        unpack(lambda wc: PLAN.robustness_inputs(wc.method)),
        selection=get_robustness_selection_made,
    output:
        ood=report(
            LAYOUT.robustness_file("{method}", "ood.json"),
            caption="../../report/captions/robustness.rst",
            category="Robustness",
        ),
        wise=report(
            LAYOUT.robustness_file("{method}", "wise.json"),
            caption="../../report/captions/robustness.rst",
            category="Robustness",
        ),
    log:
        LAYOUT.robustness_file("{method}", "log.txt"),
    benchmark:
        LAYOUT.robustness_file("{method}", "benchmark.tsv")
    conda:
        "../../envs/train.yaml"
    threads: config["threads"]
    resources:
        **job_resources("robustness", PLAN.robustness_experiment()),
    params:
        backbone=lambda wc: PLAN.backbone_arg(PLAN.robustness_experiment()),
        sets=lambda wc: PLAN.robustness_eval(),
        alphas=lambda wc: as_json(PLAN.robustness["alphas"]),
        class_subsets=lambda wc: as_json(PLAN.class_subsets()),
        device=config["device"],
    shell:
        "peftstudy robustness --method {wildcards.method} --backbone {params.backbone}"
        " --final {input.final} --eval {params.sets} --alphas {params.alphas} --threads {threads}"
        " --class-subsets {params.class_subsets}"
        " --device {params.device}"
        " --out-ood {output.ood} --out-wise {output.wise} > {log} 2>&1"
