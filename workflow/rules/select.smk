# One selection per experiment, every (dataset, method)'s choice in one selected.json: each checkpoint's completion
# re-evaluates the whole DAG, so there are as few as the protocol allows (docs/scale.md). The finals of a choice
# carry its grid point in their path and each record reads its own entry: a re-selection that keeps a (dataset,
# method)'s point reruns nothing of it.


checkpoint select:
    """Choose each (dataset, method)'s grid point on val; the finals of the chosen points follow."""
    input:
        unpack(lambda wc: PLAN.selection.select_spec(wc.experiment).inputs()),
        spec=LAYOUT.spec_file("select", "{experiment}"),
    output:
        selected=LAYOUT.selected("{experiment}"),
        summary=LAYOUT.selection_file("{experiment}", "tune.csv"),
    log:
        LAYOUT.selection_file("{experiment}", "select.log"),
    conda:
        "../../envs/train.yaml"
    shell:
        "peftstudy run @{input.spec} > {log} 2>&1"


rule spec_file:
    """A spec that may be too long for one command-line argument (plan.specs.Spec.as_file), written for its job to
    read (`peftstudy run @FILE`). Its digest is the param: the file is rewritten, and its job reruns, exactly when
    the spec changed."""
    output:
        spec=LAYOUT.spec_file("{stage}", "{name}"),
    log:
        LAYOUT.spec_file("{stage}", "{name}") + ".log",
    params:
        digest=lambda wc: PLAN.selection.file_spec(wc.stage, wc.name).digest(),
    run:
        write_spec_file(
            output.spec,
            PLAN.selection.file_spec(wildcards.stage, wildcards.name),
            log[0],
        )
