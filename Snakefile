# `snakemake` from the repository root runs the workflow in workflow/Snakefile (where the
# Snakemake workflow catalog and `module` users expect it), with config/ and results/ here.
# Not the `include:` directive: an include keeps the including file's default target (none
# here), so plain `snakemake` would do nothing; this call takes workflow/Snakefile's `rule all`,
# as `module` and `snakemake -s workflow/Snakefile` do (snakemake/workflow.py, `include`).
workflow.include("workflow/Snakefile", overwrite_default_target=True)
