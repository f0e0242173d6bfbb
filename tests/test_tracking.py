"""Runs where users look: TensorBoard's HParams tab and MLflow.

Every training run writes its settings and best validation scores into its own TensorBoard
event files (read back with TensorBoard's own reader); the optional rule mlflow_export logs
every finished run into MLflow once (read back with MLflow's own client).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CONFIGS, EXPERIMENTS, planned_jobs, snakemake, tool_env
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

pytestmark = pytest.mark.slow
BEST = {"best/val_loss", "best/val_acc", "best/val_macro_f1", "best/epoch"}


def history(run: Path) -> list[dict[str, str]]:
    with open(run / "train" / "history.csv") as f:
        return list(csv.DictReader(f))


def hparams_data(events: EventAccumulator) -> dict[str, HParamsPluginData]:
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    return {tag: HParamsPluginData.FromString(data) for tag, data in content.items()}


def test_each_run_writes_its_hparams_into_its_own_event_files(tiny_run):
    results = tiny_run / "results"
    # One TensorBoard run per experiment, none beside them (add_hparams would have added a
    # timestamped folder per run: pytorch/pytorch#32651).
    folders = {p.parent.relative_to(results) for p in results.rglob("events.out.tfevents.*")}
    assert folders == {Path(exp, "train", "tensorboard") for exp in EXPERIMENTS}
    for exp in EXPERIMENTS:
        events = EventAccumulator(str(results / exp / "train" / "tensorboard")).Reload()
        data = hparams_data(events)
        hparams = data[metadata.SESSION_START_INFO_TAG].session_start_info.hparams
        config = json.loads((results / exp / "provenance.json").read_text())["config"]
        assert hparams["model"].string_value == config["model"] == "resnet18"
        assert hparams["lr"].number_value == pytest.approx(config["lr"])
        assert hparams["image_size"].number_value == config["image_size"]
        assert hparams["augment.preset"].string_value == config["augment"]["preset"]
        assert hparams["cache_size"].string_value == "null"
        experiment = data[metadata.EXPERIMENT_TAG].experiment
        assert {m.name.tag for m in experiment.metric_infos} == BEST
        # The scores are the best epoch's, as scalars under the tags the tab reads.
        (epoch,) = events.Scalars("best/epoch")
        row = history(results / exp)[int(epoch.value) - 1]
        (acc,) = events.Scalars("best/val_acc")
        assert acc.value == pytest.approx(float(row["val_acc"]))
        assert max(float(r["val_acc"]) for r in history(results / exp)) == pytest.approx(acc.value)


def runs_by_name(uri: str, experiment: str = "cvpipe") -> dict[str, object]:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    return {r.info.run_name: r for r in client.search_runs([found.experiment_id])}


def check_run(client: MlflowClient, run, folder: Path) -> None:
    """One MLflow run holds the experiment's config, metrics per epoch, test scores, files."""
    provenance = json.loads((folder / "provenance.json").read_text())
    config, params = provenance["config"], run.data.params
    assert params["model"] == config["model"] and float(params["lr"]) == config["lr"]
    assert int(params["image_size"]) == config["image_size"]
    assert params["augment.preset"] == config["augment"]["preset"]
    rows = history(folder)
    val_acc = sorted(client.get_metric_history(run.info.run_id, "val_acc"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in val_acc] == [
        (int(r["epoch"]), pytest.approx(float(r["val_acc"]))) for r in rows
    ]
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.metrics["test_macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert run.data.metrics["test_calibration_ece"] == pytest.approx(metrics["calibration"]["ece"])
    assert run.data.tags["mlflow.source.git.commit"] == provenance["git"]["commit"]
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"MODEL_CARD.md", "provenance.json", "metrics.json", "plots"} <= top
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {f"plots/{p}.png" for p in ("curves", "confusion", "gradcam")} <= plots


def test_mlflow_export_logs_every_run_once(tiny_run_copy, tmp_path):
    work = tiny_run_copy
    overlay = tmp_path / "tracking.yaml"
    overlay.write_text("tracking:\n  mlflow: true\n")
    configs = [*CONFIGS, overlay]
    # Turning it on asks for the export and nothing else: no training, no evaluation.
    assert planned_jobs(work, configfiles=configs) == {"mlflow_export": 1, "all": 1}
    env = {k: v for k, v in tool_env().items() if not k.startswith("MLFLOW_")}
    snakemake(work, configfiles=configs, env=env)
    store = f"sqlite:///{work}/results/mlflow.db"
    runs = runs_by_name(store)
    assert sorted(runs) == sorted(EXPERIMENTS)
    client = MlflowClient(store)
    for name, run in runs.items():
        check_run(client, run, work / "results" / name)
    # Artifacts sit beside the database, not in ./mlruns of wherever the export ran.
    assert (work / "results" / "mlflow-artifacts").is_dir() and not (work / "mlruns").exists()

    snakemake(work, "--forcerun", "mlflow_export", configfiles=configs, env=env)
    summary = json.loads((work / "results" / "tracking" / "mlflow-export.json").read_text())
    assert {name: r["added"] for name, r in summary["runs"].items()} == dict.fromkeys(
        EXPERIMENTS, False
    )
    again = runs_by_name(store)
    assert {n: r.info.run_id for n, r in again.items()} == {
        n: r.info.run_id for n, r in runs.items()
    }

    # MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME choose another store: it gets the export.
    other = f"sqlite:///{tmp_path}/other.db"
    moved = {**env, "MLFLOW_TRACKING_URI": other, "MLFLOW_EXPERIMENT_NAME": "sweep"}
    snakemake(work, configfiles=configs, env=moved)
    assert sorted(runs_by_name(other, "sweep")) == sorted(EXPERIMENTS)


def test_export_of_a_missing_results_folder_names_it(tmp_path):
    missing = tmp_path / "nowhere"
    proc = subprocess.run(
        [sys.executable, "-m", "cvpipe", "mlflow-export", "--results", str(missing),
         "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--experiment", "cvpipe",
         "--summary", str(tmp_path / "s.json")],
        capture_output=True, text=True, env=tool_env(),
    )  # fmt: skip
    assert proc.returncode == 1
    assert str(missing) in proc.stderr and "results/" in proc.stderr
