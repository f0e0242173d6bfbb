# Optional stage: every experiment's model predicts the images of `predict.images` (off while it
# is null). The folder is ancient(): a new mtime alone does not rerun prediction; its content
# fingerprint (a param) does, as for the index's data.
import hashlib

from cvpipe.datatree import sha256_file

PREDICT_IMAGES = config["predict"]["images"]
if PREDICT_IMAGES and not os.path.isdir(PREDICT_IMAGES):
    raise WorkflowError(
        f"predict.images {PREDICT_IMAGES!r} is not a folder (relative paths start at "
        f"{os.getcwd()}). Point it at a folder of images, or set it to null."
    )
# How a job starts, by the experiment's GPUs (0 or 1 for inference), as cvpipe.launch starts
# evaluate: one locked GPU id of its own, or the CPU without touching CUDA.
PREDICT_LAUNCH = [
    "python -m cvpipe predict --device cpu",
    "python -m cvpipe gpus --count 1 -- python -m cvpipe predict --device cuda",
]
# What rule all asks of this stage: nothing while predict.images is null.
PREDICT_OUTPUTS = (
    expand("results/{experiment}/predict/predictions.csv", experiment=EXPERIMENTS)
    if PREDICT_IMAGES
    else []
)
# tree_fingerprint hashes the files in subfolders (cached per file, as for the data); the files
# directly in the folder, which a data set does not have, are hashed beside it.
PREDICT_FINGERPRINT = (
    hashlib.sha256(
        "\n".join(
            [
                tree_fingerprint(PREDICT_IMAGES, "results/.cache/predict-fingerprint.json"),
                *(
                    f"{entry.name}\0{sha256_file(entry.path)}"
                    for entry in sorted(os.scandir(PREDICT_IMAGES), key=lambda e: e.name)
                    if entry.is_file() and not entry.name.startswith(".")
                ),
            ]
        ).encode()
    ).hexdigest()
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
        launch=lambda wildcards: PREDICT_LAUNCH[evaluate_gpus(wildcards)],
        fingerprint=PREDICT_FINGERPRINT,
        on_bad_file=config["predict"]["on_bad_file"],
        top_k=config["predict"]["top_k"],
        code=lambda wildcards: stage_code(
            *(["gpus"] if evaluate_gpus(wildcards) else []), "predict"
        ),
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
