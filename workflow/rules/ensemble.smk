rule ensemble:
    """Per dataset: the methods' confidence, the agreement and overlaps of their predictions, and ensembles of
    their finals (three combination rules) with the same-method seed ensembles as control.
    """
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
        methods=get_analysis_methods,
    shell:
        "peftstudy ensemble --finals {input.finals} --confident-k {params.confident_k}"
        " --methods {params.methods}"
        " --out-ensembles {output.ensembles}"
        " --out-agreement {output.agreement} > {log} 2>&1"
