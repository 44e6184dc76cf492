# Data: every dataset ends as the processed-VTAB layout (images + four lists) with a manifest.json of the
# lists' sha256, then one uint8 cache per split. Where it came from (generated, an archive fetched into
# resources/, a local folder) is recorded in the manifest and so in every result's provenance.


localrules:
    generate,
    fetch,
    extract,
    index,


rule generate:
    """Render a synthetic dataset in the processed-VTAB layout (images, four lists, manifest.json)."""
    input:
        code="src/peftstudy/data/synthetic.py",
    output:
        source=directory(LAYOUT.data_file("{dataset}", "source")),
        manifest=LAYOUT.manifest("{dataset}"),
    log:
        LAYOUT.data_file("{dataset}", "generate.log"),
    wildcard_constraints:
        dataset=only(PLAN.datasets_from("synthetic")),
    conda:
        "../../envs/data.yaml"
    params:
        spec=lambda wc: PLAN.generate_spec(wc.dataset).to_json(),
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
        archive=only(ARCHIVES),
    conda:
        "../../envs/data.yaml"
    params:
        url=lambda wc: ARCHIVES[wc.archive]["url"],
        sha256=lambda wc: ARCHIVES[wc.archive]["sha256"] or "none",
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
        folder=directory("resources/data/{archive}"),
    log:
        "resources/data/{archive}.log",
    conda:
        "../../envs/data.yaml"
    params:
        limit=lambda wc: (
            f"--max-unpacked-gb {ARCHIVES[wc.archive]['max_unpacked_gb']}"
            if "max_unpacked_gb" in ARCHIVES.get(wc.archive, {})
            else ""
        ),
    shell:
        "peftstudy extract --archive {input.archive} --out {output.folder} {params.limit}"
        " --config-key archives.{wildcards.archive} > {log} 2>&1"


rule index:
    """The manifest of a dataset that is already in the layout (from an archive or a local folder)."""
    input:
        unpack(lambda wc: PLAN.source_inputs(wc.dataset)),
    output:
        manifest=LAYOUT.manifest("{dataset}"),
    log:
        LAYOUT.data_file("{dataset}", "index.log"),
    wildcard_constraints:
        dataset=only(PLAN.datasets_from("archive", "local")),
    conda:
        "../../envs/data.yaml"
    params:
        spec=lambda wc: PLAN.index_spec(wc.dataset).to_json(),
    shell:
        "peftstudy run {params.spec:q} > {log} 2>&1"


rule imagenet:
    """Check an ImageNet set the user downloaded (a gate: what to get, where, how it is checked), then write its
    lists (the few-shot draw for ImageNet-1K) and links into the user's folder, in the layout.
    """
    input:
        code="src/peftstudy/data/imagenet.py",
    output:
        source=directory(LAYOUT.data_file("{dataset}", "source")),
        manifest=LAYOUT.manifest("{dataset}"),
        checked=LAYOUT.data_file("{dataset}", "checked.json"),
    log:
        LAYOUT.data_file("{dataset}", "imagenet.log"),
    wildcard_constraints:
        dataset=only(PLAN.datasets_from("manual")),
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        spec=lambda wc: PLAN.imagenet_spec(wc.dataset).to_json(),
    shell:
        "peftstudy run {params.spec:q} > {log} 2>&1"


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
        spec=lambda wc: PLAN.manyshot_lists_spec(wc.kind, wc.subset).to_json(),
    shell:
        "peftstudy run {params.spec:q} > {log} 2>&1"


rule manyshot:
    """A many-shot subset (and fold) in the layout: the authors' lists over CIFAR-100's or RESISC45's images."""
    input:
        unpack(lambda wc: PLAN.manyshot_spec(wc.dataset).inputs()),
        code="src/peftstudy/data/manyshot.py",
    output:
        source=directory(LAYOUT.data_file("{dataset}", "source")),
        manifest=LAYOUT.manifest("{dataset}"),
    log:
        LAYOUT.data_file("{dataset}", "manyshot.log"),
    wildcard_constraints:
        dataset=only(PLAN.datasets_from("manyshot")),
    conda:
        "../../envs/data.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        spec=lambda wc: PLAN.manyshot_spec(wc.dataset).to_json(),
    shell:
        "peftstudy run {params.spec:q} > {log} 2>&1"


rule vtab_tfds:
    """A VTAB-1K task built from TensorFlow Datasets with VTAB's split recipe and label function (downloads:
    run where Snakemake runs). Tasks sharing a builder (CLEVR, dSprites, smallNORB) never prepare it at once:
    the profiles allow one tfds_builder at a time.
    """
    output:
        source=directory(LAYOUT.data_file("{dataset}", "source")),
        manifest=LAYOUT.manifest("{dataset}"),
    log:
        LAYOUT.data_file("{dataset}", "vtab_tfds.log"),
    wildcard_constraints:
        dataset=only(PLAN.datasets_from("tfds")),
    localrule: True
    conda:
        "../../envs/data.yaml"
    resources:
        tfds_builder=1,
    params:
        spec=lambda wc: PLAN.vtab_tfds_spec(wc.dataset).to_json(),
    shell:
        "peftstudy run {params.spec:q} > {log} 2>&1"


rule prepare:
    """Decode one split's list once into a uint8 tensor cache (what training reads)."""
    input:
        unpack(
            lambda wc: {
                **PLAN.source_inputs(wc.dataset),
                **PLAN.prepare_spec(wc.dataset, wc.split).inputs(),
            }
        ),
    output:
        cache=LAYOUT.data("{dataset}", "{split}"),
    log:
        LAYOUT.data_file("{dataset}", "prepare_{split}.log"),
    conda:
        "../../envs/data.yaml"
    params:
        spec=lambda wc: PLAN.prepare_spec(wc.dataset, wc.split).to_json(),
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
