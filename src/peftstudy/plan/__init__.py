"""The planning tier: what the DAG computes, standard library and PyYAML only (no torch, no Snakemake).

- :mod:`~peftstudy.plan.study`: composing, checking a study; grids, grid-point ids, packs.
- :mod:`~peftstudy.plan.layout`: every path a rule writes and a later stage reads back.
- :mod:`~peftstudy.plan.jobs`: what each job is given (inputs, arguments, resources), and the defaults.
- :mod:`~peftstudy.plan.tasks`: dataset facts that are data (the VTAB-1K task table, the many-shot subsets).

The rules (workflow/rules/*.smk) are thin input functions over one :class:`~peftstudy.plan.jobs.Plan`.
"""
