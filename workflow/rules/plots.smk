# Stage 6: the figures of one experiment, marked for the Snakemake report. A local rule: on a
# cluster it runs beside Snakemake instead of queueing.


rule plots:
    input:
        history=rules.train.output.history,
        metrics=rules.evaluate.output.metrics,
        predictions=rules.evaluate.output.predictions,
        manifest=rules.index.output.manifest,
        data=ancient(data_root),
    output:
        curves=report(
            "results/{experiment}/plots/curves.png",
            category="Runs",
            subcategory="Training curves",
            labels={"run": "{experiment}", "figure": "training curves"},
        ),
        confusion=report(
            "results/{experiment}/plots/confusion.png",
            category="Runs",
            subcategory="Confusion matrices",
            labels={"run": "{experiment}", "figure": "confusion matrix"},
        ),
        samples=report(
            "results/{experiment}/plots/samples.png",
            category="Runs",
            subcategory="Sample predictions",
            labels={"run": "{experiment}", "figure": "sample predictions"},
        ),
        per_class=report(
            "results/{experiment}/plots/per_class.png",
            category="Runs",
            subcategory="Per-class scores",
            labels={"run": "{experiment}", "figure": "per-class scores"},
        ),
        reliability=report(
            "results/{experiment}/plots/reliability.png",
            category="Runs",
            subcategory="Reliability diagrams",
            labels={"run": "{experiment}", "figure": "reliability diagram"},
        ),
    log:
        "results/logs/plots/{experiment}.log",
    params:
        image_size=image_size,
        resize=config["preprocess"]["resize"],
        dpi=config["plots"]["dpi"],
        samples=config["plots"]["samples"],
        code=stage_code("plots"),
    localrule: True
    conda:
        ENV
    shell:
        "python -m cvpipe plots --history {input.history} --metrics {input.metrics}"
        " --predictions {input.predictions} --manifest {input.manifest}"
        " --data-root {input.data} --image-size {params.image_size} --resize {params.resize}"
        " --curves {output.curves} --confusion {output.confusion}"
        " --samples {output.samples} --per-class {output.per_class}"
        " --reliability {output.reliability}"
        " --title {wildcards.experiment} --dpi {params.dpi}"
        " --num-samples {params.samples} > {log} 2>&1"
