# Stage 4: train one experiment. Checkpoints and TensorBoard events go to
# results/<experiment>/train/{checkpoints,tensorboard}/ (not declared outputs, so a failed job
# keeps them and the rerun resumes from the last epoch).
# `gpu` is the experiment's `gpus`: `--resources gpu=N` caps GPUs in use, and `cvpipe gpus`
# (in params.launch) gives each job distinct GPU ids. gpus > 1 or ddp_processes > 1 runs DDP
# under torchrun. `mem_mb` is train_mem_mb_per_gpu times the GPUs.
# `cache_scratch` (cvpipe.staging; "" = off) is a resource, not a param: where the cache is
# read from must not rerun training. Quoted, so the job expands $SLURM_TMPDIR on its node.


rule train:
    input:
        cache=cache_files,
    output:
        model="results/{experiment}/train/model.pt",
        history="results/{experiment}/train/history.csv",
        provenance="results/{experiment}/provenance.json",
    log:
        "results/logs/train/{experiment}.log",
    benchmark:
        "results/benchmarks/train/{experiment}.tsv"
    params:
        launch=train_launch,
        settings=train_config_json,
        cache_dir=cache_dir,
        code=train_code,
    resources:
        gpu=train_gpus,
        gpu_model=train_gpu_model,
        mem_mb=train_mem_mb,
        cache_scratch=CACHE_SCRATCH,
    threads: 4
    conda:
        ENV
    shell:
        "{params.launch} train --config {params.settings:q} --cache-dir {params.cache_dir}"
        " --model {output.model} --history {output.history}"
        " --provenance {output.provenance} --threads {threads}"
        " --cache-scratch {resources.cache_scratch} > {log} 2>&1"
