checkpoint select:
    """Choose a grid point on val; the finals of the chosen point follow (their path carries its id)."""
    input:
        metrics=get_tune_metrics,
    output:
        selected=LAYOUT.selected(*RUN),
        summary=LAYOUT.method_file(*RUN, "tune.csv"),
    log:
        LAYOUT.method_file(*RUN, "select.log"),
    conda:
        "../../envs/train.yaml"
    params:
        args=lambda wc: PLAN.select_args(wc.experiment, wc.method),
    shell:
        "peftstudy select {params.args} --metrics {input.metrics}"
        " --out {output.selected} --out-summary {output.summary} > {log} 2>&1"
