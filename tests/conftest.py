"""Shared fixtures: tiny data made on the fly, and complete runs of the real workflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import copy_run, snakemake


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A complete run of the workflow on the tiny built-in data set (shared, do not modify)."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    snakemake(workdir)
    return workdir


@pytest.fixture
def tiny_run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of `tiny_run` that a test may change."""
    return copy_run(tiny_run, tmp_path / "run")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """Built-in data (12 per class, 40 px), indexed and preprocessed to 32 px, without snakemake."""
    from cvpipe.index import write_index
    from cvpipe.preprocess import preprocess
    from cvpipe.synth import make_dataset

    work = tmp_path_factory.mktemp("tiny_cache")
    make_dataset(work / "data", images_per_class=12, size=40, seed=0)
    write_index(
        work / "data",
        work / "manifest.csv",
        work / "bad.csv",
        {"train": 0.5, "val": 0.25, "test": 0.25},
        seed=0,
    )
    preprocess(work / "manifest.csv", work / "data", work / "cache", size=32)
    return work
