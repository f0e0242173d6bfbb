# Stage 1: the built-in synthetic data set (only when data.root is the built-in folder).
# A checkpoint, so that the index rule's content fingerprint of the data is computed after the
# images exist rather than at the start of the run (Snakemake re-evaluates params then).


if USE_BUILTIN:

    checkpoint synth:
        output:
            directory(BUILTIN_DATA),
        log:
            "results/logs/synth.log",
        params:
            images_per_class=config["synth"]["images_per_class"],
            size=config["synth"]["size"],
            seed=config["synth"]["seed"],
            format=config["synth"]["format"],
            code=stage_code("synth"),
        threads: 4
        conda:
            ENV
        shell:
            "python -m cvpipe synth --out {output} --images-per-class {params.images_per_class}"
            " --size {params.size} --seed {params.seed} --format {params.format}"
            " --threads {threads} > {log} 2>&1"
