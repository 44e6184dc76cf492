checkpoint select:
    """Choose a grid point on val; the finals of the chosen point follow (their path carries its id)."""
    input:
        metrics=get_tune_metrics,
    output:
        selected=f"{R}/{{experiment}}/{{dataset}}/{{method}}/selected.json",
        summary=f"{R}/{{experiment}}/{{dataset}}/{{method}}/tune.csv",
    log:
        f"{R}/{{experiment}}/{{dataset}}/{{method}}/select.log",
    conda:
        "../../envs/train.yaml"
    params:
        grid=get_grid_order,
        tie_break=lambda wc: EXPERIMENTS[wc.experiment]["selection"]["tie_break"],
        metric=lambda wc: EXPERIMENTS[wc.experiment]["selection"].get(
            "metric", "val_top1"
        ),
    shell:
        "peftstudy select --grid {params.grid} --tie-break {params.tie_break} --metric {params.metric}"
        " --metrics {input.metrics}"
        " --out {output.selected} --out-summary {output.summary} > {log} 2>&1"
