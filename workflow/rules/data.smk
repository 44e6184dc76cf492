# Data: every dataset ends as the processed-VTAB layout (images + four lists) with a manifest.json of the
# lists' sha256, then one uint8 cache per split. Where it came from (generated, an archive fetched into
# resources/, a local folder) is recorded in the manifest and so in every result's provenance.


localrules:
    fetch,
    extract,
    source_local,


# Each dataset's source job (plan.sources: one module per source) writes the same two outputs, whatever the
# source: the dataset's layout folder `source/` (images and the four lists; an archive's or a local folder as links
# to its entries, ImageNet's as links into the user's folder with the gate's checked.json) and its manifest. One
# shape, since Snakemake cannot vary a rule's outputs by wildcard value; so two generic rules serve every source,
# split only by where the job runs, and a new source needs no rule.


rule source:
    """A dataset's layout folder and manifest, written by its source's job on the cluster (many-shot: reads a
    whole archive)."""
    input:
        unpack(lambda wc: PLAN.data.source_inputs(wc.dataset)),
    output:
        source=directory(LAYOUT.data_file("{dataset}", "source")),
        manifest=LAYOUT.manifest("{dataset}"),
    log:
        LAYOUT.data_file("{dataset}", "source.log"),
    wildcard_constraints:
        dataset=only(PLAN.data.datasets_where(local=False)),
    conda:
        "../../envs/data.yaml"
    resources:
        **PLAN.data.resources(local=False),
    params:
        spec=lambda wc: PLAN.data.source_spec(wc.dataset).to_json(),
    shell:
        "peftstudy run {params.spec:q} > {log} 2>&1"


rule source_local:
    """A dataset's layout folder and manifest, written where Snakemake runs: a source that downloads (TFDS), gates
    on the user's files (ImageNet) or is quick (generated, indexed). Tasks sharing a TFDS builder never prepare it
    at once: the profiles allow one tfds_builder at a time."""
    input:
        unpack(lambda wc: PLAN.data.source_inputs(wc.dataset)),
    output:
        source=directory(LAYOUT.data_file("{dataset}", "source")),
        manifest=LAYOUT.manifest("{dataset}"),
    log:
        LAYOUT.data_file("{dataset}", "source.log"),
    wildcard_constraints:
        dataset=only(PLAN.data.datasets_where(local=True)),
    conda:
        "../../envs/data.yaml"
    resources:
        **PLAN.data.resources(local=True),
    params:
        spec=lambda wc: PLAN.data.source_spec(wc.dataset).to_json(),
    shell:
        "peftstudy run {params.spec:q} > {log} 2>&1"


rule fetch:
    """Download an archive once (resumable, sha256-checked): on the login node, before any job needs it."""
    output:
        archive=study.archive_path("{archive}"),
        checksum=archive_checksum("{archive}"),
    log:
        study.archive_path("{archive}.log"),
    wildcard_constraints:
        archive=only(PLAN.data.archives),
    conda:
        "../../envs/data.yaml"
    params:
        url=lambda wc: PLAN.data.archives[wc.archive]["url"],
        sha256=lambda wc: PLAN.data.archives[wc.archive]["sha256"] or "none",
        allow=PLAN.allow_unpinned_arg,
    shell:
        "peftstudy fetch --url {params.url:q} --sha256 {params.sha256} {params.allow}"
        " --config-key archives.{wildcards.archive} --out {output.archive}"
        " --out-checksum {output.checksum} > {log} 2>&1"


rule extract:
    """Unpack a fetched archive into resources/data/ (atomically; unsafe members refused)."""
    input:
        archive=study.archive_path("{archive}"),
    output:
        folder=directory(extracted("{archive}")),
    log:
        "resources/data/{archive}.log",
    conda:
        "../../envs/data.yaml"
    params:
        limit=lambda wc: PLAN.data.extract_limit(wc.archive),
    shell:
        "peftstudy extract --archive {input.archive} --out {output.folder} {params.limit}"
        " --config-key archives.{wildcards.archive} > {log} 2>&1"


rule manyshot_lists:
    """The authors' split lists of a many-shot subset, from PETL_Vision at a pinned commit, sha256-checked."""
    output:
        lists=directory(manyshot_lists_dir("{kind}", "{subset}")),
    log:
        manyshot_lists_dir("{kind}", "{subset}") + ".log",
    wildcard_constraints:
        kind=only(MANYSHOT_SUBSETS),
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        spec=lambda wc: PLAN.data.manyshot_lists_spec(wc.kind, wc.subset).to_json(),
    shell:
        "peftstudy run {params.spec:q} > {log} 2>&1"


rule prepare:
    """Decode one split's list once into a uint8 tensor cache (what training reads)."""
    input:
        unpack(lambda wc: PLAN.data.prepare_spec(wc.dataset, wc.split).inputs()),
    output:
        cache=LAYOUT.data("{dataset}", "{split}"),
    log:
        LAYOUT.data_file("{dataset}", "prepare_{split}.log"),
    conda:
        "../../envs/data.yaml"
    params:
        spec=lambda wc: PLAN.data.prepare_spec(wc.dataset, wc.split).to_json(),
    shell:
        "peftstudy run {params.spec:q} > {log} 2>&1"


rule zero_shot_head:
    """CLIP's zero-shot head (proj + 80-template text classifier, docs/protocol.md §A.1), built once from the full
    checkpoint's text tower; then only the file is read."""
    input:
        unpack(lambda wc: PLAN.train.zero_shot_head_spec(wc.head).inputs()),
        code="src/peftstudy/models/clip.py",
    output:
        head="{head}",
    log:
        "{head}.log",
    wildcard_constraints:
        head=only(PLAN.train.zero_shot_heads),
    conda:
        "../../envs/train.yaml"
    threads: PLAN.train.threads
    resources:
        **job_resources("robustness"),
    params:
        spec=lambda wc: PLAN.train.zero_shot_head_spec(wc.head).to_json(),
    shell:
        RUN_SPEC_SHELL


rule fetch_backbone:
    """Download a backbone's weights once (each backbone with a `source`), check them, save them as timm
    safetensors."""
    input:
        lambda wc: PLAN.train.fetch_backbone_inputs(wc.weights),
    output:
        weights="{weights}",
    log:
        "{weights}.log",
    wildcard_constraints:
        weights=only(PLAN.train.fetched_backbones),
    localrule: True
    conda:
        "../../envs/train.yaml"
    params:
        args=lambda wc: PLAN.train.fetch_backbone_args(wc.weights),
    shell:
        "peftstudy fetch-backbone {params.args} --out {output.weights} > {log} 2>&1"
