rule ensemble:
    """Per dataset: ensembles of the methods' finals (three combination rules) and their pairwise agreement."""
    input:
        finals=get_ensemble_inputs,
    output:
        ensembles=report(
            f"{R}/{{experiment}}/{{dataset}}/analysis/ensembles.json",
            caption="../../report/captions/analysis.rst",
            category="Ensembles and agreement",
            subcategory="{experiment}",
        ),
        agreement=report(
            f"{R}/{{experiment}}/{{dataset}}/analysis/agreement.json",
            caption="../../report/captions/analysis.rst",
            category="Ensembles and agreement",
            subcategory="{experiment}",
        ),
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
