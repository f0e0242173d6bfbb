"""cvpipe: a Snakemake experiment pipeline for image classification.

The package holds one module per stage (synth, index, preprocess, train, evaluate, plots,
compare) plus the pieces they share. Importing it must stay cheap and torch-free, because the
Snakefile imports `cvpipe.datatree` at parse time.
"""

__version__ = "0.1.0"
