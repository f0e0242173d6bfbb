# Stage 3: decode and resize once into a uint8 cache per split, one cache per image size.


rule preprocess:
    input:
        manifest=rules.index.output.manifest,
        data=ancient(data_root),
    output:
        stats=f"{CACHE}/stats.json",
        arrays=expand(
            f"{CACHE}/{{split}}_{{kind}}.npy",
            split=SPLITS,
            kind=["images", "labels"],
            allow_missing=True,
        ),
    log:
        "results/logs/preprocess/{size}px.log",
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.stats),
        resize=config["preprocess"]["resize"],
        code=stage_code("preprocess"),
    threads: 4
    conda:
        ENV
    shell:
        "python -m cvpipe preprocess --manifest {input.manifest} --data-root {input.data}"
        " --out-dir {params.out_dir} --size {wildcards.size} --resize {params.resize}"
        " --threads {threads} > {log} 2>&1"
