# Stage 5: test-split metrics, predictions and inference speed of the trained model.


rule evaluate:
    input:
        model=rules.train.output.model,
        cache=cache_files,
        manifest=rules.index.output.manifest,
    output:
        metrics="results/{experiment}/eval/metrics.json",
        predictions="results/{experiment}/eval/predictions.csv",
        timing="results/{experiment}/eval/timing.json",
    log:
        "results/logs/evaluate/{experiment}.log",
    params:
        cache_dir=cache_dir,
        code=stage_code("evaluate"),
    threads: 4
    conda:
        ENV
    shell:
        "python -m cvpipe evaluate --model {input.model} --cache-dir {params.cache_dir}"
        " --manifest {input.manifest} --metrics {output.metrics}"
        " --predictions {output.predictions} --timing {output.timing}"
        " --threads {threads} > {log} 2>&1"
