# Optional stage (config `tracking.mlflow`): every finished run under results/ logged into MLflow,
# once each (cvpipe.tracking). The store is MLFLOW_TRACKING_URI, or a SQLite file in results/;
# the experiment MLFLOW_EXPERIMENT_NAME, or `cvpipe`. Both are params: a new store gets the
# export. A leaf: nothing depends on it, so MLflow never reaches training. A local rule.
MLFLOW_URI = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///results/mlflow.db"
MLFLOW_EXPERIMENT = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "cvpipe"


rule mlflow_export:
    input:
        metrics=expand(rules.evaluate.output.metrics, experiment=EXPERIMENTS),
        provenance=expand(rules.train.output.provenance, experiment=EXPERIMENTS),
        history=expand(rules.train.output.history, experiment=EXPERIMENTS),
        # The artifacts it logs: exported once they exist.
        plots=expand("results/{experiment}/plots/{plot}.png", experiment=EXPERIMENTS, plot=PLOTS),
        gradcam=expand(rules.gradcam.output, experiment=GRADCAM_RUNS),
        model_card=expand(rules.model_card.output.md, experiment=CARD_RUNS),
    output:
        summary="results/tracking/mlflow-export.json",
    log:
        "results/logs/mlflow_export.log",
    params:
        # results/: the folder above each experiment's (results/<experiment>/eval/metrics.json).
        results=lambda wildcards, input: os.path.dirname(
            os.path.dirname(os.path.dirname(input.metrics[0]))
        ),
        tracking_uri=MLFLOW_URI,
        experiment=MLFLOW_EXPERIMENT,
        code=stage_code("mlflow_export"),
    localrule: True
    conda:
        ENV
    shell:
        "python -m cvpipe mlflow-export --results {params.results}"
        " --tracking-uri {params.tracking_uri:q} --experiment {params.experiment:q}"
        " --summary {output.summary} > {log} 2>&1"


# rule all's MLflow summary (workflow/Snakefile): only when `tracking.mlflow` is true.
MLFLOW_OUTPUTS = rules.mlflow_export.output if config["tracking"]["mlflow"] else []
