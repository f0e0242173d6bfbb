# Stage 7: one table and chart over all experiments, with their provenance, for the report;
# the configurations over seeds (groups.*: mean, sd, 95% CI) and the one chosen on validation
# (best.json); plus metrics.json and history/ in the layout dvc.yaml declares for
# `dvc metrics/plots diff`.
# A local rule: on a cluster it runs beside Snakemake instead of queueing.


rule compare:
    input:
        metrics=expand(rules.evaluate.output.metrics, experiment=EXPERIMENTS),
        timing=expand(rules.evaluate.output.timing, experiment=EXPERIMENTS),
        history=expand(rules.train.output.history, experiment=EXPERIMENTS),
        provenance=expand(rules.train.output.provenance, experiment=EXPERIMENTS),
    output:
        csv="results/comparison/comparison.csv",
        md="results/comparison/comparison.md",
        # The report's first category; its rows sort by label, hence the numbers.
        html=report(
            "results/comparison/comparison.html",
            caption="../report/comparison.rst",
            category="Comparison",
            labels={"figure": "1. configurations and runs (table, provenance)"},
        ),
        png=report(
            "results/comparison/comparison.png",
            caption="../report/comparison_chart.rst",
            category="Comparison",
            labels={"figure": "2. top configurations by validation (chart)"},
        ),
        groups_csv=report(
            "results/comparison/groups.csv",
            caption="../report/groups.rst",
            category="Comparison",
            labels={"figure": "3. configurations over seeds (groups.csv)"},
        ),
        groups_md="results/comparison/groups.md",
        best=report(
            "results/comparison/best.json",
            caption="../report/best.rst",
            category="Comparison",
            labels={"figure": "4. the choice on validation (best.json)"},
        ),
        metrics="results/comparison/metrics.json",
        # One CSV per run, <run>.csv; a folder output, so a run taken out of the config
        # leaves no stale curve behind for `dvc plots` (dvc.yaml declares the folder).
        history=directory("results/comparison/history"),
        # The report's landing page (given to the report with --report-metadata).
        report_metadata="results/comparison/report-metadata.json",
    log:
        "results/logs/compare.log",
    params:
        experiments=EXPERIMENTS,
        dpi=config["plots"]["dpi"],
        stage_code=report_stage_code(REPORTED_STAGES),
        container=config["container"],
        code=stage_code("compare"),
    localrule: True
    conda:
        ENV
    shell:
        # Each list in EXPERIMENTS order (expand keeps it): compare reads exactly these files.
        "python -m cvpipe compare --experiment {params.experiments} --metrics {input.metrics}"
        " --timing {input.timing} --provenance {input.provenance} --history {input.history}"
        " --csv {output.csv} --md {output.md} --html {output.html} --png {output.png}"
        " --metrics-out {output.metrics} --history-dir {output.history}"
        " --report-metadata {output.report_metadata} --groups-csv {output.groups_csv}"
        " --groups-md {output.groups_md} --best {output.best} --dpi {params.dpi}"
        " --container {params.container:q} {params.stage_code} > {log} 2>&1"
