localrules:
    generate,


rule generate:
    """Render a synthetic dataset in the processed-VTAB layout (images, four lists, manifest.json)."""
    input:
        code="src/peftstudy/data/synthetic.py",
    output:
        source=directory(f"{R}/data/{{dataset}}/source"),
        manifest=f"{R}/data/{{dataset}}/manifest.json",
    log:
        f"{R}/data/{{dataset}}/generate.log",
    conda:
        "../../envs/data.yaml"
    params:
        spec=lambda wc: as_json(
            dict(DATASETS[wc.dataset], image_size=config["backbone"]["image_size"])
        ),
        seed=config["seed"],
    shell:
        "peftstudy generate --dataset {wildcards.dataset} --spec {params.spec} --seed {params.seed}"
        " --out {output.source} --manifest {output.manifest} > {log} 2>&1"


rule prepare:
    """Decode one split's list once into a uint8 tensor cache (what training reads)."""
    input:
        source=f"{R}/data/{{dataset}}/source",
        manifest=f"{R}/data/{{dataset}}/manifest.json",
    output:
        cache=f"{R}/data/{{dataset}}/{{split}}.npz",
    log:
        f"{R}/data/{{dataset}}/prepare_{{split}}.log",
    conda:
        "../../envs/data.yaml"
    params:
        image_size=config["backbone"]["image_size"],
    shell:
        "peftstudy prepare --source {input.source} --manifest {input.manifest} --split {wildcards.split}"
        " --image-size {params.image_size} --out {output.cache} > {log} 2>&1"
