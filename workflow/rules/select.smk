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
        grid=get_grid_order,
        tie_break=lambda wc: PLAN.selection(wc.experiment)["tie_break"],
        metric=lambda wc: PLAN.selection(wc.experiment)["metric"],
    shell:
        "peftstudy select --grid {params.grid} --tie-break {params.tie_break} --metric {params.metric}"
        " --metrics {input.metrics}"
        " --out {output.selected} --out-summary {output.summary} > {log} 2>&1"
