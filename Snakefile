# cvpipe: labelled images in; trained, evaluated, plotted and reported classifiers out.
# Stages live in workflow/rules/ (one file each), settings in config/config.yaml, the code they
# run in the cvpipe package (src/cvpipe). Outputs go to results/. See docs/architecture.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


# Every job runs in this image under `--sdm apptainer` (or `--use-singularity`); without it,
# jobs use the current environment, or envs/cvpipe.yaml under `--sdm conda`.
container: config["container"]


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/index.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/compare.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
