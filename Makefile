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

# The image (envs/versions.yaml states its name), and the engine that builds it.
IMAGE ?= $(shell sed -n 's/^image: *//p' envs/versions.yaml)
ENGINE ?= $(shell command -v docker >/dev/null 2>&1 && echo docker || (command -v podman >/dev/null 2>&1 && echo podman))
SIF ?= cvpipe.sif

.PHONY: install run report test test-slurm lint format clean container sif config-readme

install: $(STAMP)

$(STAMP): pyproject.toml envs/requirements-local.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c envs/requirements-local.txt -e '.[workflow,dev,export,data,tracking]'
	touch $@

run: install
	@start=$$(date +%s); \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(SNAKEMAKE) && \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(SNAKEMAKE) --report results/report.html \
	  --report-metadata results/comparison/report-metadata.json && \
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
	$(BIN)/lint-imports --no-logo
	$(BIN)/mypy
	$(BIN)/snakefmt --check Snakefile workflow
	PATH="$(CURDIR)/$(BIN):$$PATH" $(SNAKEMAKE) --lint

format: install
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests
	$(BIN)/snakefmt Snakefile workflow

# config/README.md from workflow/schemas/config.schema.yaml (tests/test_configdoc.py checks it).
config-readme: install
	$(BIN)/python -m cvpipe.configdoc

# The pinned CUDA image, built locally (no registry needed): `make container` with Docker or
# Podman, `make sif` with Apptainer alone. Then: snakemake --sdm apptainer --config
# container=$(SIF) (or push $(IMAGE) and keep the default). See containers/README.md.
container:
	@test -n "$(ENGINE)" || { echo "make container needs docker or podman; with Apptainer only, run: make sif" >&2; exit 1; }
	$(ENGINE) build -f containers/Dockerfile -t $(IMAGE) .
	$(ENGINE) run --rm $(IMAGE) python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

sif:
	@command -v apptainer >/dev/null 2>&1 || { echo "make sif needs apptainer (https://apptainer.org/docs/admin/main/installation.html)" >&2; exit 1; }
	apptainer build $(SIF) containers/cvpipe.def
	@echo "Built $(SIF). Use it: snakemake --sdm apptainer --config container=$(SIF)"

clean:
	rm -rf results .snakemake
