# Stage 7 (optional): the trained model as ONNX and as a torch.export program, with a sidecar
# model.json, for inference without cvpipe (README "Export"). rule all requests it only when
# the config's `export` is true; `snakemake results/<experiment>/export/model.onnx` asks anyway.


rule export:
    input:
        model=rules.train.output.model,
    output:
        onnx="results/{experiment}/export/model.onnx",
        program="results/{experiment}/export/model.pt2",
        sidecar="results/{experiment}/export/model.json",
    log:
        "results/logs/export/{experiment}.log",
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.onnx),
        code=stage_code("export"),
    conda:
        ENV
    shell:
        "python -m cvpipe export --model {input.model} --out-dir {params.out_dir} > {log} 2>&1"


# rule all's export files (workflow/Snakefile): every experiment's, when `export` is true.
EXPORT_OUTPUTS = expand(rules.export.output, experiment=EXPERIMENTS) if config["export"] else []
