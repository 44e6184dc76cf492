rule ensemble:
    """Per dataset: the methods' confidence, the agreement and overlaps of their predictions, and ensembles of
    their finals (three combination rules) with the same-method seed ensembles as control.
    """
    input:
        unpack(
            lambda wc: PLAN.analysis.ensemble_spec(
                wc.experiment, wc.dataset, selected_gp
            ).inputs()
        ),
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
        spec=lambda wc: PLAN.analysis.ensemble_spec(
            wc.experiment, wc.dataset, selected_gp
        ).to_json(),
    shell:
        "peftstudy run {params.spec:q} > {log} 2>&1"
