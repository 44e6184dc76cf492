rule tables_spec:
    """The tables job's spec (~600 KB on the paper study: more than one argument may hold), written for it to read.
    Its digest is the param: the file is rewritten, and the tables rerun, exactly when the spec changed.
    """
    input:
        final_benchmarks=get_final_benchmarks,
    output:
        spec=LAYOUT.spec_file("tables", "tables"),
    log:
        LAYOUT.spec_file("tables", "tables") + ".log",
    params:
        digest=lambda wc: tables_spec().digest(),
    run:
        write_spec_file(output.spec, tables_spec(), log[0])


rule tables:
    """Tidy CSV tables of everything the study computed (what the report reads), the authors' numbers beside."""
    input:
        unpack(get_tables_inputs),
        spec=LAYOUT.spec_file("tables", "tables"),
    output:
        tables=[
            report(path, caption="../../report/captions/tables.rst", category="Tables")
            for path in PLAN.report.tables().values()
        ],
    log:
        LAYOUT.tables_file("tables.log"),
    conda:
        "../../envs/report.yaml"
    shell:
        "peftstudy run @{input.spec} > {log} 2>&1"


rule report:
    """Figures by a papermill-executed notebook, the page by a Jinja template: one self-contained HTML file."""
    input:
        unpack(lambda wc: PLAN.report.report_spec().inputs()),
    output:
        html=report(
            LAYOUT.report(),
            caption="../../report/caption.rst",
            category="Report",
        ),
        executed=LAYOUT.report_file("figures.ipynb"),
        copies=PLAN.report.report_spec().outputs()["copies"],
    log:
        LAYOUT.report_file("report.log"),
    conda:
        "../../envs/report.yaml"
    params:
        spec=lambda wc: PLAN.report.report_spec().to_json(),
    shell:
        "peftstudy run {params.spec:q} > {log} 2>&1"
