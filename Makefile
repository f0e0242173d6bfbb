# Two commands for a fresh machine (see README.md):
#   make run   install, run the whole workflow on the built-in data (CPU), build the report
#   make test  install, lint, run the test suite (make test-slurm: the SLURM tests)
# The local venv pins every package in envs/requirements-local.txt (torch 2.14.1 there: the
# newest inside the package's range that this machine has; the container pins 2.8).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SNAKEMAKE := $(BIN)/snakemake

.PHONY: install run report test test-slurm lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml envs/requirements-local.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c envs/requirements-local.txt -e '.[workflow,dev]'
	touch $@

run: install
	@start=$$(date +%s); \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(SNAKEMAKE) && \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(SNAKEMAKE) --report results/report.html && \
	echo "Workflow finished in $$(( $$(date +%s) - start )) s." && \
	cat results/comparison/comparison.md && \
	echo "Report: $(CURDIR)/results/report.html"

test: install lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

# The SLURM tests start a real one-node SLURM (munged, slurmctld, slurmd) as root; Debian's
# slurm-wlm and munge must be installed (.ci/run installs them).
test-slurm: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -m slurm

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/snakefmt --check Snakefile workflow
	PATH="$(CURDIR)/$(BIN):$$PATH" $(SNAKEMAKE) --lint

format: install
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests
	$(BIN)/snakefmt Snakefile workflow

clean:
	rm -rf results .snakemake
