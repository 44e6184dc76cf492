rule tables:
    """Tidy CSV tables of everything the study computed (what the report reads)."""
    input:
        unpack(get_table_inputs),
    output:
        tables=expand(f"{R}/tables/{{table}}.csv", table=TABLES),
    log:
        f"{R}/tables/tables.log",
    conda:
        "../../envs/report.yaml"
    params:
        study=config["study"],
        config_hash=CONFIG_HASH,
        out_dir=lambda wc, output: os.path.dirname(output.tables[0]),
    shell:
        "peftstudy tables --study {params.study} --config-hash {params.config_hash}"
        " --tune {input.tune} --finals {input.finals} --analysis {input.analysis}"
        " --robustness {input.robustness} --out-dir {params.out_dir} > {log} 2>&1"


rule report:
    """Figures by a papermill-executed notebook, the page by a Jinja template: one self-contained HTML file."""
    input:
        tables=rules.tables.output.tables,
        notebook="report/notebooks/figures.ipynb",
        template="report/templates/index.html.j2",
    output:
        html=report(
            f"{R}/report/index.html",
            caption="../../report/caption.rst",
            category="Report",
        ),
        notebook=f"{R}/report/figures.ipynb",
    log:
        f"{R}/report/report.log",
    conda:
        "../../envs/report.yaml"
    params:
        tables=lambda wc, input: os.path.dirname(input.tables[0]),
    shell:
        "peftstudy report --tables {params.tables} --notebook {input.notebook}"
        " --template {input.template} --out {output.html} --out-notebook {output.notebook} > {log} 2>&1"
