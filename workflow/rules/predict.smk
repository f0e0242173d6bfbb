# Optional stage: every experiment's model predicts the images of `predict.images` (off while it
# is null). The folder is ancient(): a new mtime alone does not rerun prediction; its content
# fingerprint (a param) does, as for the index's data.
from cvpipe.datatree import files_fingerprint

PREDICT_IMAGES = config["predict"]["images"]
if PREDICT_IMAGES and not os.path.isdir(PREDICT_IMAGES):
    raise WorkflowError(
        f"predict.images {PREDICT_IMAGES!r} is not a folder (relative paths start at "
        f"{os.getcwd()}). Point it at a folder of images, or set it to null."
    )
# What rule all asks of this stage: nothing while predict.images is null.
PREDICT_OUTPUTS = (
    expand("results/{experiment}/predict/predictions.csv", experiment=EXPERIMENTS)
    if PREDICT_IMAGES
    else []
)
# Every file below the folder, hashed once per size/mtime/inode (cached as the data's are).
PREDICT_FINGERPRINT = (
    files_fingerprint(PREDICT_IMAGES, "results/.cache/predict-fingerprint.json")
    if PREDICT_IMAGES
    else None
)


rule predict:
    input:
        model=rules.train.output.model,
        images=lambda wildcards: ancient(PREDICT_IMAGES),
    output:
        predictions="results/{experiment}/predict/predictions.csv",
        bad_files="results/{experiment}/predict/bad_files.csv",
    log:
        "results/logs/predict/{experiment}.log",
    params:
        launch=predict_launch,
        fingerprint=PREDICT_FINGERPRINT,
        on_bad_file=config["predict"]["on_bad_file"],
        top_k=config["predict"]["top_k"],
        code=predict_code,
    resources:
        gpu=evaluate_gpus,
        gpu_model=evaluate_gpu_model,
    threads: 4
    conda:
        ENV
    shell:
        "{params.launch} --model {input.model} --out {output.predictions}"
        " --bad-out {output.bad_files} --on-bad-file {params.on_bad_file}"
        " --top-k {params.top_k} --threads {threads} {input.images} > {log} 2>&1"
