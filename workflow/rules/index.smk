# Stage 2: decode-check every image, split by class, write the manifest.
# The raw data is ancient(): a new mtime alone (touch, dvc pull) does not rerun indexing; the
# data's content fingerprint (a param) does.


rule index:
    input:
        data=ancient(data_root),
    output:
        manifest="results/dataset/manifest.csv",
        bad_images="results/dataset/bad_images.csv",
        duplicates="results/dataset/duplicates.csv",
    log:
        "results/logs/index.log",
    params:
        fingerprint=data_fingerprint,
        split=",".join(f"{k}={v}" for k, v in config["data"]["split"].items()),
        seed=config["data"]["split_seed"],
        on_bad_image=config["data"]["on_bad_image"],
        on_conflicting_labels=config["data"]["on_conflicting_labels"],
        code=stage_code("index"),
    threads: 4
    conda:
        ENV
    shell:
        "python -m cvpipe index --data-root {input.data} --manifest {output.manifest}"
        " --bad-images {output.bad_images} --duplicates {output.duplicates} --split {params.split} --seed {params.seed}"
        " --on-bad-image {params.on_bad_image}"
        " --on-conflicting-labels {params.on_conflicting_labels}"
        " --threads {threads} > {log} 2>&1"
