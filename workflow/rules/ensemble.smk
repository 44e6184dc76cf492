rule ensemble:
    """Per dataset: the methods' confidence, the agreement and overlaps of their predictions, and ensembles of
    their finals (three combination rules) with the same-method seed ensembles as control.
    """
    input:
        finals=lambda wc: PLAN.ensemble_inputs(wc.experiment, wc.dataset),
        selection=get_selection_made,
    output:
        ensembles=report(
            LAYOUT.analysis_file("{experiment}", "{dataset}", "ensembles.json"),
            caption="../../report/captions/analysis.rst",
            category="Ensembles and agreement",
            subcategory="{experiment}",
        ),
        agreement=report(
            LAYOUT.analysis_file("{experiment}", "{dataset}", "agreement.json"),
            caption="../../report/captions/analysis.rst",
            category="Ensembles and agreement",
            subcategory="{experiment}",
        ),
    log:
        LAYOUT.analysis_file("{experiment}", "{dataset}", "ensemble.log"),
    conda:
        "../../envs/train.yaml"
    params:
        confident_k=PLAN.confident_k(),
        methods=lambda wc: " ".join(PLAN.analysis_methods(wc.experiment)),
    shell:
        "peftstudy ensemble --finals {input.finals} --confident-k {params.confident_k}"
        " --methods {params.methods}"
        " --out-ensembles {output.ensembles}"
        " --out-agreement {output.agreement} > {log} 2>&1"
