# Stage 4: train one experiment. Checkpoints and TensorBoard events go to
# results/<experiment>/train/{checkpoints,tensorboard}/ (not declared outputs, so a failed job
# keeps them and the rerun resumes from the last epoch).


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
        settings=train_config_json,
        cache_dir=cache_dir,
    threads: 4
    conda:
        ENV
    shell:
        "cvpipe train --config {params.settings:q} --cache-dir {params.cache_dir}"
        " --model {output.model} --history {output.history}"
        " --provenance {output.provenance} --threads {threads} > {log} 2>&1"
