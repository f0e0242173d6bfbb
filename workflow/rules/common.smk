# Config validation and the small input functions the rules share. Logic lives in cvpipe.
import functools
import inspect
import json
import os
import re
import shlex
import signal
import sys

from snakemake.sourcecache import LocalSourceFile
from snakemake.utils import validate
from snakemake_interface_executor_plugins.settings import DeploymentMethod

# The workflow runs its own checkout's code: the Snakefile imports cvpipe from the src/ of the
# checkout this file lies in, and every job does too (cvpipe.jobenv), also in a container or
# conda env. Found from this file, not from `workflow.basedir` (the main Snakefile's folder: the
# repository root, or another project when cvpipe is used as a module).
_HERE = workflow.current_basedir
if not isinstance(_HERE, LocalSourceFile):
    raise WorkflowError(
        f"cvpipe runs the code of its own checkout, and {_HERE.get_path_or_uri(secret_free=True)} is not on "
        "this machine: clone cvpipe and point `module cvpipe: snakefile:` at its "
        'workflow/Snakefile (README, "Use as a module").'
    )
REPO = os.path.normpath(os.path.join(_HERE.get_path_or_uri(secret_free=True), "..", ".."))
SRC = os.path.join(REPO, "src")
PACKAGE = os.path.join(SRC, "cvpipe")
CODE_CACHE = "results/.cache/code-fingerprint.json"  # per file state, like the data's
sys.path.insert(0, SRC)

from cvpipe import jobenv, stagecode
from cvpipe.config import (
    BUILTIN_DATA,
    coerce_strings,
    config_errors,
    experiments,
    run_names_pattern,
    run_settings,
    runs_making,
    split_errors,
    uses_builtin_data,
)
from cvpipe.errors import CvpipeError
from cvpipe.settings import cache_side
from cvpipe.datatree import tree_fingerprint
from cvpipe.modelnames import model_errors
from cvpipe.launch import evaluate_launcher, train_launcher

SCHEMA = workflow.source_path("../schemas/config.schema.yaml")
# `--config 'train={"epochs": 5}'` passes nested values as strings: parsed where the schema
# wants a number or a boolean (the same dict, which every rule file reads).
config.update(coerce_strings(config, SCHEMA))


def stop_if(problems):
    if problems:
        raise WorkflowError("Invalid config:\n  " + "\n  ".join(problems))


stop_if(config_errors(config, SCHEMA))
validate(config, "../schemas/config.schema.yaml")
# Every run: the named experiments, then the sweep's (cvpipe.config.expand_sweep), name ->
# train overrides. A sweep run named like an experiment, or no run at all, stops here.
try:
    RUNS = experiments(config)
except CvpipeError as error:
    stop_if([str(error)])
# What the schema cannot say, on the config with its defaults filled: caught here, not in a job.
# model_errors names a sweep's model where it is written (sweep.grid.model[i]), not per run.
stop_if(split_errors(config) + model_errors(config))

# The built-in data set (BUILTIN_DATA) is drawn by the synth rule only while data.root points there.
USE_BUILTIN = uses_builtin_data(config)
# The train resource `cache_scratch` (quoted for the job's shell; "" = off), see train.smk.
CACHE_SCRATCH = shlex.quote(config.get("cache_scratch") or "")
if not USE_BUILTIN and not os.path.isdir(config["data"]["root"]):
    raise WorkflowError(
        f"data.root {config['data']['root']!r} is not a folder (relative paths start at "
        f"{os.getcwd()}). Point it at a folder with one subfolder of images per class."
    )

# SLURM's time-limit warning (profiles/slurm: --signal=USR1@120) and `scancel --signal=USR1` go to
# every process of a job step, this Snakemake included, whose default reaction would be to die
# and take the job with it. Ignored here (and so in the shells it starts), the signal reaches
# the training process, which handles it: checkpoint, exit 75, retry (cvpipe.preemption).
signal.signal(signal.SIGUSR1, signal.SIG_IGN)

EXPERIMENTS = list(RUNS)
# The runs whose Grad-CAM and model card `snakemake` makes: the named experiments', and the
# sweep's only where sweep.extras asks (cvpipe.config.runs_making); any run's on request.
GRADCAM_RUNS = runs_making(config, EXPERIMENTS, "gradcam")
CARD_RUNS = runs_making(config, EXPERIMENTS, "model_card")
SPLITS = ["train", "val", "test"]
CACHE = "results/dataset/cache/{size}px"
PLOTS = ["curves", "confusion", "samples", "per_class"]

ENV = "../../envs/cvpipe.yaml"

IN_CONTAINER = DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method
shell.prefix(jobenv.shell_prefix(SRC, config["container"] if IN_CONTAINER else None))
if IN_CONTAINER:
    jobenv.prepare_apptainer(
        config["container"], workflow.deployment_settings.apptainer_prefix, REPO
    )


# `experiment` matches the configured runs only (a target of another run has no rule). A sweep's
# runs as the product of their names' parts: Snakemake copies the constraint into every file
# pattern, and a list of 1,000 names cost seconds per parse (config.run_names_pattern).
wildcard_constraints:
    experiment=run_names_pattern(config),
    size=r"\d+",


def per_run(func):
    """Marks a function that Snakemake calls for every job of a run (an input, param or
    resource function) and spares it the parameter lookup: Snakemake asks inspect.signature
    which arguments a function takes three times per call, 60,000 times in the plan of a
    1,000-run sweep; inspect.signature returns a function's __signature__ when it has one."""
    func.__signature__ = inspect.signature(func)
    return func


@per_run
def data_root(wildcards=None):
    """The raw data folder; for the built-in set, only once the synth checkpoint has run."""
    if USE_BUILTIN:
        # Snakemake regroups jobs when a checkpoint finishes and then submits some twice
        # (snakemake#1628, snakemake-executor-plugin-slurm#253). Grouping is only known once
        # the DAG is built (here), not while the Snakefile is read.
        if workflow.group_settings.overwrite_groups and not os.path.isdir(BUILTIN_DATA):
            raise WorkflowError(
                "Job grouping (--groups, profiles/slurm-sweep) needs the built-in data set drawn "
                "first: it is made by a checkpoint, and Snakemake submits grouped jobs twice when "
                "a checkpoint finishes (snakemake#1628). Draw it without grouping, then rerun "
                f"this command: snakemake --profile profiles/slurm {BUILTIN_DATA}"
            )
        return checkpoints.synth.get().output[0]
    return config["data"]["root"]


def data_fingerprint(wildcards):
    """Content hash of the raw data: the index reruns when it changes, not on new mtimes."""
    return tree_fingerprint(data_root(), "results/.cache/data-fingerprint.json")


@functools.cache
def train_settings(experiment):
    """An experiment's resolved settings (defaults merged once per parse; read-only)."""
    return run_settings(config, RUNS[experiment])


@per_run
def cache_dir(wildcards):
    """The cache an experiment trains from: its side is the experiment's resolved cache size
    (image_size, or larger for random resized crops: cvpipe.settings.cache_side)."""
    return experiment_cache(wildcards.experiment)


@functools.cache
def experiment_cache(experiment):
    """cache_dir's answer, once per experiment and parse (five jobs of each ask for it)."""
    settings = train_settings(experiment)
    return CACHE.format(size=cache_side(settings, config["preprocess"]["resize"]))


@per_run
def cache_files(wildcards):
    """The preprocessed cache an experiment reads (chosen by its cache size)."""
    folder = cache_dir(wildcards)
    return [f"{folder}/stats.json"] + [
        f"{folder}/{split}_{kind}.npy" for split in SPLITS for kind in ("images", "labels")
    ]


@per_run
def cache_stats(wildcards):
    """The stats.json of that cache (classes, sizes, mean and std)."""
    return f"{cache_dir(wildcards)}/stats.json"


@per_run
def test_cache_files(wildcards):
    """The test split of that cache: all that evaluation reads (the model holds the rest)."""
    folder = cache_dir(wildcards)
    return [f"{folder}/test_images.npy", f"{folder}/test_labels.npy"]


@per_run
def train_config_json(wildcards):
    return settings_json(wildcards.experiment)


@functools.cache
def settings_json(experiment):
    """train_settings as the JSON `cvpipe train --config` takes (once per experiment)."""
    return json.dumps(train_settings(experiment), sort_keys=True)


@per_run
def image_size(wildcards):
    return train_settings(wildcards.experiment)["image_size"]


@per_run
def train_launch(wildcards):
    """`cvpipe`, or torchrun and/or the GPU-id allocator in front of it (cvpipe.launch)."""
    settings = train_settings(wildcards.experiment)
    return train_launcher(settings["gpus"], settings["ddp_processes"])


@per_run
def train_gpus(wildcards):
    return train_settings(wildcards.experiment)["gpus"]


@per_run
def train_gpu_model(wildcards):
    """SLURM GPU type for GPU experiments only: a CPU job must not ask for `--gpus=<type>:0`."""
    return config.get("slurm_gpu_model", "") if train_gpus(wildcards) else ""


@per_run
def train_mem_mb(wildcards):
    """Memory grows with the GPUs (each DDP process holds its own loader and model copy); a CPU
    experiment asks for one GPU's worth."""
    return max(1, train_gpus(wildcards)) * config["train_mem_mb_per_gpu"]


@per_run
def evaluate_gpus(wildcards):
    """One GPU for a GPU experiment's evaluation (its `gpu` resource), none for a CPU one."""
    return min(train_gpus(wildcards), 1)


@per_run
def evaluate_launch(wildcards):
    """`cvpipe evaluate --device cpu`, or `--device cuda` behind the GPU-id allocator."""
    return evaluate_launcher(evaluate_gpus(wildcards))


@per_run
def predict_launch(wildcards):
    """`cvpipe predict --device cpu`, or `--device cuda` behind the GPU-id allocator."""
    return evaluate_launcher(evaluate_gpus(wildcards), "predict")


@per_run
def evaluate_gpu_model(wildcards):
    return config.get("slurm_gpu_model", "") if evaluate_gpus(wildcards) else ""


@functools.cache
def stage_code(*commands):
    """`module:hash` of the code `python -m cvpipe <command>` runs: a rule's `code` param, so a
    change to that code reruns the stage and what follows (cvpipe.stagecode). Once per parse."""
    return stagecode.summary(stagecode.stage_hashes(commands, PACKAGE, CODE_CACHE))


@per_run
def train_code(wildcards):
    """A GPU experiment's job also runs `cvpipe gpus` before `cvpipe train`."""
    return stage_code(*(["gpus"] if train_gpus(wildcards) else []), "train")


@per_run
def evaluate_code(wildcards):
    return stage_code(*(["gpus"] if evaluate_gpus(wildcards) else []), "evaluate")


@per_run
def predict_code(wildcards):
    return stage_code(*(["gpus"] if evaluate_gpus(wildcards) else []), "predict")


# Stages whose code fingerprint the comparison reports; training's comes from each
# experiment's provenance.json (computed in the job from the code it imported).
REPORTED_STAGES = (["synth"] if USE_BUILTIN else []) + ["index", "preprocess", "evaluate", "plots"]


def report_stage_code(stages):
    """`--stage-code stage=fingerprint` words for the comparison's provenance table."""
    return " ".join(
        f"--stage-code {stage}="
        + stagecode.short(stagecode.stage_hashes([stage], PACKAGE, CODE_CACHE))
        for stage in [*stages, "compare"]
    )


def final_outputs():
    """The comparison, and every run's figures: one file per plots job asks for the job, which
    writes all five (a 1,000-run sweep's plan looks up 1,000 files here, not 5,000)."""
    return [
        "results/comparison/comparison.html",
        *expand("results/{experiment}/plots/curves.png", experiment=EXPERIMENTS),
    ]
