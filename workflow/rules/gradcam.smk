# Stage 6b: Grad-CAM heat maps of sample test predictions, marked for the Snakemake report.
# It needs torch but only a couple of dozen images: it runs on the CPU (`--device cpu`, never a
# GPU id), as a normal job, so on a cluster it runs on a compute node, not beside Snakemake.


rule gradcam:
    input:
        model=rules.train.output.model,
        predictions=rules.evaluate.output.predictions,
        manifest=rules.index.output.manifest,
        data=ancient(data_root),
    output:
        report(
            "results/{experiment}/plots/gradcam.png",
            category="Runs",
            subcategory="Grad-CAM",
            labels={"run": "{experiment}", "figure": "Grad-CAM"},
        ),
    log:
        "results/logs/gradcam/{experiment}.log",
    params:
        dpi=config["plots"]["dpi"],
        samples=config["plots"]["samples"],
        code=stage_code("gradcam"),
    threads: 2
    conda:
        ENV
    shell:
        "python -m cvpipe gradcam --model {input.model} --predictions {input.predictions}"
        " --manifest {input.manifest} --data-root {input.data} --out {output}"
        " --title {wildcards.experiment} --num-samples {params.samples} --dpi {params.dpi}"
        " --device cpu --threads {threads} > {log} 2>&1"
