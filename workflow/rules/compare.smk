# Stage 7: one table and chart over all experiments, with their provenance, for the report.


rule compare:
    input:
        metrics=expand(rules.evaluate.output.metrics, experiment=EXPERIMENTS),
        timing=expand(rules.evaluate.output.timing, experiment=EXPERIMENTS),
        history=expand(rules.train.output.history, experiment=EXPERIMENTS),
        provenance=expand(rules.train.output.provenance, experiment=EXPERIMENTS),
    output:
        csv="results/comparison/comparison.csv",
        md="results/comparison/comparison.md",
        html=report(
            "results/comparison/comparison.html",
            caption="../report/comparison.rst",
            category="Comparison",
            labels={"figure": "table and provenance"},
        ),
        png=report(
            "results/comparison/comparison.png",
            caption="../report/comparison_chart.rst",
            category="Comparison",
            labels={"figure": "test scores"},
        ),
    log:
        "results/logs/compare.log",
    params:
        experiments=" ".join(f"--experiment {e}=results/{e}" for e in EXPERIMENTS),
        dpi=config["plots"]["dpi"],
    conda:
        ENV
    shell:
        "cvpipe compare {params.experiments} --csv {output.csv} --md {output.md}"
        " --html {output.html} --png {output.png} --dpi {params.dpi} > {log} 2>&1"
