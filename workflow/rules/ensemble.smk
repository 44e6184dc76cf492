rule ensemble:
    """Per dataset: probability-averaged ensembles of the methods' finals and their pairwise agreement."""
    input:
        finals=get_ensemble_inputs,
    output:
        ensembles=f"{R}/{{experiment}}/{{dataset}}/analysis/ensembles.json",
        agreement=f"{R}/{{experiment}}/{{dataset}}/analysis/agreement.json",
    log:
        f"{R}/{{experiment}}/{{dataset}}/analysis/ensemble.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "peftstudy ensemble --finals {input.finals} --out-ensembles {output.ensembles}"
        " --out-agreement {output.agreement} > {log} 2>&1"
