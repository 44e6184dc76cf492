rule ensemble:
    """Per dataset: the methods' confidence, the agreement and overlaps of their predictions, and ensembles of
    their finals (three combination rules) with the same-method seed ensembles as control.
    """
    input:
        finals=get_ensemble_inputs,
    output:
        ensembles=f"{R}/{{experiment}}/{{dataset}}/analysis/ensembles.json",
        agreement=f"{R}/{{experiment}}/{{dataset}}/analysis/agreement.json",
    log:
        f"{R}/{{experiment}}/{{dataset}}/analysis/ensemble.log",
    conda:
        "../../envs/train.yaml"
    params:
        confident_k=config.get("analysis", {}).get("confident_k", 0.25),
        methods=get_analysis_methods,
    shell:
        "peftstudy ensemble --finals {input.finals} --confident-k {params.confident_k}"
        " --methods {params.methods}"
        " --out-ensembles {output.ensembles}"
        " --out-agreement {output.agreement} > {log} 2>&1"
