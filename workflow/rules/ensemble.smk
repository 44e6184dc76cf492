rule ensemble:
    """Per dataset: ensembles of the methods' finals (three combination rules) and their pairwise agreement."""
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
    shell:
        "peftstudy ensemble --finals {input.finals} --confident-k {params.confident_k}"
        " --out-ensembles {output.ensembles}"
        " --out-agreement {output.agreement} > {log} 2>&1"
