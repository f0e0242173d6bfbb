"""Export finished runs to MLflow, for users who compare runs in `mlflow ui`.

`export_runs` logs every finished run under a results folder (one with `provenance.json`,
`train/history.csv` and `eval/metrics.json`) as one MLflow run: the resolved train config as
params (nested keys dotted), each history column per epoch (step = epoch), the test scores of
`eval/metrics.json` (`test_*`), the figures, the model card and the provenance record as
artifacts, and the git commit as MLflow's source tag. It reads files only: no torch, and nothing
in training imports it, so MLflow (the `tracking` extra) is never a training dependency.

A run is known by its tag `cvpipe.run_id`: the experiment's name and a hash of its
`provenance.json`, which a new training rewrites. A second export of the same results finds
every run by that tag and adds nothing; a retrained experiment becomes a new MLflow run. An
export that failed halfway leaves no finished run with the tag, so the next one logs it again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from cvpipe import atomic
from cvpipe.errors import CvpipeError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

RUN_TAG = "cvpipe.run_id"
# MLflow's limits for one log_batch call (REST API docs, "Log Batch").
MAX_PARAMS, MAX_METRICS = 100, 1000


@dataclass(frozen=True)
class FinishedRun:
    """One experiment's outputs under results/, as the export reads them."""

    name: str
    folder: Path
    provenance: dict
    history: list[dict[str, str]]
    metrics: dict
    run_id: str  # the `cvpipe.run_id` tag


def finished_runs(results: str | Path) -> list[FinishedRun]:
    """Every run under `results` whose training and evaluation have finished, by name."""
    root = Path(results)
    if not root.is_dir():
        raise CvpipeError(f"--results {root} is not a folder: point it at the workflow's results/")
    runs = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [folder / "provenance.json", folder / "eval/metrics.json"]
        if all(f.is_file() for f in files) and (folder / "train/history.csv").is_file():
            runs.append(_read_run(folder))
    return runs


def _read_run(folder: Path) -> FinishedRun:
    provenance_bytes = (folder / "provenance.json").read_bytes()
    try:
        provenance = json.loads(provenance_bytes)
        metrics = json.loads((folder / "eval/metrics.json").read_text(encoding="utf-8"))
        with open(folder / "train/history.csv", newline="", encoding="utf-8") as f:
            history = list(csv.DictReader(f))
    except (ValueError, csv.Error) as exc:
        raise CvpipeError(f"{folder}: unreadable run files ({exc}); rerun its stages") from None
    digest = hashlib.sha256(provenance_bytes).hexdigest()[:16]
    return FinishedRun(folder.name, folder, provenance, history, metrics, f"{folder.name}-{digest}")


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: `augment.preset` keys, JSON text values."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value if isinstance(value, str) else json.dumps(value)
    return out


def evaluation_scores(metrics: dict) -> dict[str, float]:
    """The scalar test scores of metrics.json as `test_<name>`, calibration's as
    `test_calibration_<name>`, per class as `test_<class>_<score>`."""
    out: dict[str, float] = {}
    sections = [("test_", metrics), ("test_calibration_", metrics.get("calibration", {}))]
    sections += [(f"test_{c}_", s) for c, s in metrics.get("per_class", {}).items()]
    for prefix, section in sections:
        for key, value in section.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                out[prefix + key] = float(value)
    return out


def epoch_metrics(history: list[dict[str, str]]) -> Iterator[tuple[str, float, int]]:
    """(column, value, epoch) for every number in the history; blank cells are left out."""
    for row in history:
        epoch = int(row["epoch"])
        for key, text in row.items():
            if key != "epoch" and text not in ("", None):
                value = float(text)
                if math.isfinite(value):
                    yield key, value, epoch


def artifacts(run: FinishedRun) -> list[tuple[Path, str | None]]:
    """(file, folder in the MLflow run) for the figures, the model card and the records."""
    found: list[tuple[Path, str | None]] = [
        (p, "plots") for p in sorted((run.folder / "plots").glob("*.png"))
    ]
    for name in ("MODEL_CARD.md", "provenance.json", "eval/metrics.json"):
        if (run.folder / name).is_file():
            found.append((run.folder / name, None))
    return found


def tags(run: FinishedRun) -> dict[str, str]:
    """The run's identity and where it came from (`mlflow.source.git.commit`: MLflow's own)."""
    git = run.provenance.get("git") or {}
    code = run.provenance.get("code") or {}
    found = {
        RUN_TAG: run.run_id,
        "cvpipe.experiment": run.name,
        "mlflow.runName": run.name,
        "mlflow.source.git.commit": git.get("commit"),
        "cvpipe.git_dirty": git.get("dirty"),
        "cvpipe.code_fingerprint": code.get("fingerprint"),
        "cvpipe.manifest_sha256": (run.provenance.get("data") or {}).get("manifest_sha256"),
        "cvpipe.host": run.provenance.get("host"),
    }
    return {key: str(value) for key, value in found.items() if value is not None}


def public_uri(uri: str) -> str:
    """The tracking URI without a password, for the summary file and the log."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _artifact_root(tracking_uri: str) -> str | None:
    """A SQLite store's artifacts go beside its database file (MLflow's default would be
    ./mlruns of whatever folder the export ran in); a server chooses its own."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return (database.parent.resolve() / "mlflow-artifacts").as_uri()


def _experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(name, artifact_location=_artifact_root(tracking_uri)))


def _existing(client: MlflowClient, experiment_id: str, run: FinishedRun) -> str | None:
    """The MLflow run id of this run's finished export; unfinished ones are deleted."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run.run_id}'", max_results=100
    )
    done = [r.info.run_id for r in found if r.info.status == "FINISHED"]
    for stale in found:
        if stale.info.status != "FINISHED":
            client.delete_run(stale.info.run_id)
    return done[0] if done else None


def _log_values(client: MlflowClient, mlflow_id: str, run: FinishedRun) -> None:
    """Params, per-epoch metrics and test scores, in batches within MLflow's limits."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    params = [Param(k, v) for k, v in flat_params(run.provenance.get("config") or {}).items()]
    metrics = [Metric(k, v, now, step) for k, v, step in epoch_metrics(run.history)]
    last_epoch = int(run.history[-1]["epoch"]) if run.history else 0
    scores = evaluation_scores(run.metrics)
    metrics += [Metric(k, v, now, last_epoch) for k, v in scores.items()]
    for i in range(0, len(params), MAX_PARAMS):
        client.log_batch(mlflow_id, params=params[i : i + MAX_PARAMS])
    for i in range(0, len(metrics), MAX_METRICS):
        client.log_batch(mlflow_id, metrics=metrics[i : i + MAX_METRICS])


def _log_run(client: MlflowClient, experiment_id: str, run: FinishedRun) -> str:
    """One finished MLflow run; marked FAILED (so the next export redoes it) if logging fails."""
    # The MLflow run spans the training (provenance's times), so the UI shows when it trained.
    training = run.provenance.get("training") or {}
    started, finished = (_ms(training.get(k)) for k in ("started_unix", "finished_unix"))
    created = client.create_run(experiment_id, started, tags(run), run_name=run.name)
    mlflow_id = created.info.run_id
    try:
        _log_values(client, mlflow_id, run)
        for path, folder in artifacts(run):
            client.log_artifact(mlflow_id, str(path), folder)
    except BaseException:
        client.set_terminated(mlflow_id, "FAILED")
        raise
    client.set_terminated(mlflow_id, "FINISHED", end_time=finished)
    return mlflow_id


def _ms(unix_seconds: float | None) -> int | None:
    return None if unix_seconds is None else int(unix_seconds * 1000)


def export_runs(
    results: str | Path, tracking_uri: str, experiment: str, summary_path: str | Path
) -> dict[str, Any]:
    """Log every finished run under `results` not yet in `experiment` of `tracking_uri`; write
    and return a summary (run name -> MLflow run id, and whether this export added it)."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise CvpipeError(
            "the MLflow export needs the `tracking` extra: pip install 'cvpipe[tracking]'"
        ) from None
    runs = finished_runs(results)
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client, experiment, tracking_uri)
    exported: dict[str, dict[str, Any]] = {}
    for run in runs:
        mlflow_id = _existing(client, experiment_id, run)
        added = mlflow_id is None
        if mlflow_id is None:
            mlflow_id = _log_run(client, experiment_id, run)
        exported[run.name] = {"mlflow_run_id": mlflow_id, RUN_TAG: run.run_id, "added": added}
        log.info("%s: %s MLflow run %s", run.name, "logged" if added else "already in", mlflow_id)
    summary = {
        "tracking_uri": public_uri(tracking_uri),
        "experiment": experiment,
        "experiment_id": experiment_id,
        "runs": exported,
    }
    atomic.write_json(summary_path, summary)
    return summary
