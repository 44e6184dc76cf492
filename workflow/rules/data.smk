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
        source=directory(f"{R}/data/{{dataset}}/source"),
        manifest=f"{R}/data/{{dataset}}/manifest.json",
    log:
        f"{R}/data/{{dataset}}/generate.log",
    wildcard_constraints:
        dataset=only(study.datasets_from(config, "synthetic")),
    conda:
        "../../envs/data.yaml"
    params:
        spec=lambda wc: as_json(
            dict(
                study.data_spec(DATASETS[wc.dataset]),
                image_size=config["backbone"]["image_size"],
            )
        ),
        seed=config["seed"],
    shell:
        "peftstudy generate --dataset {wildcards.dataset} --spec {params.spec} --seed {params.seed}"
        " --out {output.source} --manifest {output.manifest} > {log} 2>&1"


rule fetch:
    """Download an archive once (resumable, sha256-checked): on the login node, before any job needs it."""
    output:
        archive="resources/archives/{archive}",
        checksum="resources/archives/{archive}.sha256",
    log:
        "resources/archives/{archive}.log",
    wildcard_constraints:
        archive=only(ARCHIVES),
    conda:
        "../../envs/data.yaml"
    params:
        url=lambda wc: ARCHIVES[wc.archive]["url"],
        sha256=lambda wc: ARCHIVES[wc.archive]["sha256"] or "none",
    shell:
        "peftstudy fetch --url {params.url:q} --sha256 {params.sha256} --out {output.archive}"
        " --out-checksum {output.checksum} > {log} 2>&1"


rule extract:
    """Unpack a fetched archive into resources/data/ (atomically; unsafe members refused)."""
    input:
        archive="resources/archives/{archive}",
    output:
        folder=directory("resources/data/{archive}"),
    log:
        "resources/data/{archive}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "peftstudy extract --archive {input.archive} --out {output.folder} > {log} 2>&1"


rule index:
    """The manifest of a dataset that is already in the layout (from an archive or a local folder)."""
    input:
        unpack(get_source_inputs),
    output:
        manifest=f"{R}/data/{{dataset}}/manifest.json",
    log:
        f"{R}/data/{{dataset}}/index.log",
    wildcard_constraints:
        dataset=only(study.datasets_from(config, "archive", "local")),
    conda:
        "../../envs/data.yaml"
    params:
        source=lambda wc: get_source_dir(wc.dataset),
        about=lambda wc: as_json(get_source_record(wc.dataset)),
        classes=lambda wc: DATASETS[wc.dataset]["classes"],
        checksum=lambda wc, input: input.get("checksum", ""),
    shell:
        "peftstudy index --dataset {wildcards.dataset} --source {params.source:q} --classes {params.classes}"
        " --about {params.about} --checksum-file '{params.checksum}' --out {output.manifest} > {log} 2>&1"


rule prepare:
    """Decode one split's list once into a uint8 tensor cache (what training reads)."""
    input:
        unpack(get_source_inputs),
        manifest=f"{R}/data/{{dataset}}/manifest.json",
    output:
        cache=f"{R}/data/{{dataset}}/{{split}}.npz",
    log:
        f"{R}/data/{{dataset}}/prepare_{{split}}.log",
    conda:
        "../../envs/data.yaml"
    params:
        source=lambda wc: get_source_dir(wc.dataset),
        image_size=lambda wc: (
            0
            if DATASETS[wc.dataset].get("cache") == "native"
            else config["backbone"]["image_size"]
        ),
    shell:
        "peftstudy prepare --source {params.source:q} --manifest {input.manifest} --split {wildcards.split}"
        " --image-size {params.image_size} --out {output.cache} > {log} 2>&1"


if "source" in config["backbone"]:

    localrules:
        fetch_backbone,

    rule fetch_backbone:
        """Download the backbone's weights once, check them, and save them as timm safetensors."""
        output:
            weights=config["backbone"]["weights"],
        log:
            f"{config['backbone']['weights']}.log",
        conda:
            "../../envs/train.yaml"
        params:
            url=config["backbone"]["source"]["url"],
            sha256=config["backbone"]["source"]["sha256"] or "none",
            fmt=config["backbone"]["source"]["format"],
            arch=config["backbone"]["arch"],
        shell:
            "peftstudy fetch-backbone --url {params.url:q} --sha256 {params.sha256} --format {params.fmt}"
            " --arch {params.arch} --out {output.weights} > {log} 2>&1"
