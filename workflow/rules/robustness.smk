rule robustness:
    """One method's finals on the in-distribution and shifted test sets, and its WiSE curve."""
    input:
        unpack(
            lambda wc: PLAN.analysis.robustness_spec(wc.method, selected_gp).inputs()
        ),
        code=lambda wc: PLAN.method_sources(wc.method),
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
    threads: PLAN.train.threads
    resources:
        **job_resources("robustness", PLAN.analysis.robustness_experiment()),
    params:
        spec=lambda wc: PLAN.analysis.robustness_spec(wc.method, selected_gp).to_json(),
    shell:
        RUN_SPEC_SHELL
