# One selection per (experiment, dataset), every method's choice in one selected.json: each checkpoint's completion
# re-evaluates the whole DAG, so there are as few as the protocol allows (docs/scale.md). The finals of a choice
# carry its grid point in their path and the records read their own method's entry: a re-selection that keeps a
# method's point reruns nothing of that method.


checkpoint select:
    """Choose each method's grid point on val; the finals of the chosen points follow."""
    input:
        metrics=get_tune_metrics,
    output:
        selected=LAYOUT.selected(*SELECTION),
        summary=LAYOUT.selection_file(*SELECTION, "tune.csv"),
    log:
        LAYOUT.selection_file(*SELECTION, "select.log"),
    conda:
        "../../envs/train.yaml"
    params:
        args=lambda wc: PLAN.select_args(wc.experiment),
    shell:
        "peftstudy select {params.args} --metrics {input.metrics}"
        " --out {output.selected} --out-summary {output.summary} > {log} 2>&1"
