# Stage 5: test-split metrics, predictions and inference speed of the trained model.
# A GPU experiment's evaluation runs on one GPU id locked by `cvpipe gpus` (`gpu` resource 1);
# a CPU experiment's runs with --device cpu and never touches CUDA (params.launch).


rule evaluate:
    input:
        model=rules.train.output.model,
        cache=test_cache_files,
        manifest=rules.index.output.manifest,
    output:
        metrics="results/{experiment}/eval/metrics.json",
        predictions="results/{experiment}/eval/predictions.csv",
        timing="results/{experiment}/eval/timing.json",
    log:
        "results/logs/evaluate/{experiment}.log",
    params:
        launch=evaluate_launch,
        cache_dir=cache_dir,
        code=evaluate_code,
    resources:
        gpu=evaluate_gpus,
        gpu_model=evaluate_gpu_model,
        # Unused here; the same value as training's, so the two can share a SLURM job
        # (profiles/slurm-sweep: a group's string resources must agree).
        cache_scratch=CACHE_SCRATCH,
    threads: 4
    conda:
        ENV
    shell:
        "{params.launch} --model {input.model} --cache-dir {params.cache_dir}"
        " --manifest {input.manifest} --metrics {output.metrics}"
        " --predictions {output.predictions} --timing {output.timing}"
        " --threads {threads} > {log} 2>&1"
