# One selection per experiment, every (dataset, method)'s choice in one selected.json: each checkpoint's completion
# re-evaluates the whole DAG, so there are as few as the protocol allows (docs/scale.md). The finals of a choice
# carry its grid point in their path and each record reads its own entry: a re-selection that keeps a (dataset,
# method)'s point reruns nothing of it.


checkpoint select:
    """Choose each (dataset, method)'s grid point on val; the finals of the chosen points follow."""
    input:
        metrics=get_tune_metrics,
    output:
        selected=LAYOUT.selected("{experiment}"),
        summary=LAYOUT.selection_file("{experiment}", "tune.csv"),
    log:
        LAYOUT.selection_file("{experiment}", "select.log"),
    conda:
        "../../envs/train.yaml"
    params:
        args=lambda wc: PLAN.select_args(wc.experiment),
    shell:
        "peftstudy select {params.args} --metrics {input.metrics}"
        " --out {output.selected} --out-summary {output.summary} > {log} 2>&1"
