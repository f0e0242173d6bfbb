# Stage 8: one experiment's model card, from the files the earlier stages wrote: Markdown for
# the results folder, the same card as HTML for the report (which shows HTML, not Markdown).
# A local rule: it only reads a few small files.


rule model_card:
    input:
        manifest=rules.index.output.manifest,
        stats=cache_stats,
        provenance=rules.train.output.provenance,
        metrics=rules.evaluate.output.metrics,
        history=rules.train.output.history,
    output:
        md="results/{experiment}/MODEL_CARD.md",
        html=report(
            "results/{experiment}/MODEL_CARD.html",
            category="Runs",
            subcategory="Model cards",
            labels={"run": "{experiment}", "figure": "model card"},
        ),
    log:
        "results/logs/model_card/{experiment}.log",
    params:
        data_root=config["data"]["root"],
        model_file=rules.train.output.model,
        onnx_file="results/{experiment}/export/model.onnx",
        code=stage_code("model_card"),
    localrule: True
    conda:
        ENV
    shell:
        "python -m cvpipe model-card --experiment {wildcards.experiment}"
        " --manifest {input.manifest} --stats {input.stats} --provenance {input.provenance}"
        " --metrics {input.metrics} --history {input.history} --data-root {params.data_root:q}"
        " --model-file {params.model_file} --onnx-file {params.onnx_file}"
        " --out {output.md} --html {output.html} > {log} 2>&1"
