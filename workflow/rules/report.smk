rule tables:
    """Tidy CSV tables of everything the study computed (what the report reads), the authors' numbers beside."""
    input:
        unpack(lambda wc: PLAN.table_inputs()),
        final_benchmarks=get_final_benchmarks,
    output:
        tables=[
            report(
                LAYOUT.table(table),
                caption="../../report/captions/tables.rst",
                category="Tables",
            )
            for table in TABLES
        ],
        authors=[LAYOUT.table(f"authors_{name}") for name in AUTHORS],
    log:
        LAYOUT.tables_file("tables.log"),
    conda:
        "../../envs/report.yaml"
    params:
        study=config["study"],
        config_hash=PLAN.config_hash,
        # The study's facts, and the cost estimate the report sets beside what the run spent.
        context=as_json(PLAN.report_context() | {"cost": estimated_cost(PLAN)}),
        out_dir=lambda wc, output: os.path.dirname(output.tables[0]),
        # Each file with what it is, as the plan names it: nothing reads that back from a path.
        analysis=lambda wc: [as_json(output) for output in LAYOUT.analysis_outputs()],
        benchmarks=get_benchmark_jobs,
    shell:
        "peftstudy tables --study {params.study} --config-hash {params.config_hash}"
        " --context {params.context} --tune {input.tune} --tune-metrics {input.tune_metrics}"
        " --finals {input.finals}"
        " --analysis {params.analysis} --robustness {input.robustness}"
        " --manifests {input.manifests} --benchmarks {params.benchmarks}"
        " --authors {input.authors} --out-dir {params.out_dir} > {log} 2>&1"


rule report:
    """Figures by a papermill-executed notebook, the page by a Jinja template: one self-contained HTML file."""
    input:
        tables=rules.tables.output.tables,
        authors=rules.tables.output.authors,
        notebook="report/notebooks/figures.ipynb",
        template="report/templates/index.html.j2",
    output:
        html=report(
            LAYOUT.report(),
            caption="../../report/caption.rst",
            category="Report",
        ),
        notebook=LAYOUT.report_file("figures.ipynb"),
    log:
        LAYOUT.report_file("report.log"),
    conda:
        "../../envs/report.yaml"
    params:
        tables=lambda wc, input: os.path.dirname(input.tables[0]),
        tolerance=PLAN.report_tolerance(),
    shell:
        "peftstudy report --tables {params.tables} --notebook {input.notebook}"
        " --template {input.template} --tolerance {params.tolerance} --out {output.html}"
        " --out-notebook {output.notebook} > {log} 2>&1"
