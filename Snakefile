# peftstudy: the PEFT study of Mai et al. (CVPR 2025) as one DAG. Stages in data-flow order.
from snakemake.utils import min_version

from peftstudy.plan import study

min_version("9.0")


# The embedded mini study is the default; a --configfile (studies/*.yaml) replaces it, not merged into it. Read
# as the configfile directive would (--config on top), but a syntax error names its line (Snakemake's does not).
if not workflow.config_settings.configfiles:
    study.update_config(config, study.load_yaml("config.yaml"))
    study.update_config(config, workflow.config_settings.overwrite_config)


include: "workflow/rules/common.smk"


# Bookkeeping that takes seconds runs where Snakemake runs (on a cluster, the login node), not as jobs.
localrules:
    spec_file,
    tables_spec,
    select,
    collect,
    ensemble,
    tables,
    report,
    all,


include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/final.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/robustness.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        get_final_outputs,
        get_all_selected_finals,
