"""Train stage: the training loop of one experiment, from start or resume to the model file.

`train(cfg, ...)` is the plain function tests call; `cvpipe train` is its command line. It starts
afresh or resumes (`cvpipe.checkpoint`), runs the epochs (steps and validation: `cvpipe.epoch`),
keeps the best one, fits its temperature on the validation split (`cvpipe.calibration`), and
writes the model file, the history and the provenance record. The parts it trains (model,
AdamW, LR schedule, loss, precision, transforms, EMA, Mixup/CutMix) are assembled by
`cvpipe.parts`; threads and autocast come from `cvpipe.runtime`.

With `ema_decay`, every epoch validates the model and the EMA of its weights (`cvpipe.ema`;
history columns `ema_val_*`); an epoch's candidate for best is the better of the two on
`monitor`, and the model file holds the best epoch's candidate and says which (`weights`:
"model" or "ema"), so evaluation, predict and export load it like any other.

One code path for CPU, one GPU, AMP and DDP (under torchrun): mixed precision is a no-op
`autocast`/`GradScaler` when off, DDP is detected from the environment (`cvpipe.distributed`),
and every file write goes through `RunFiles`, which only writes on rank 0. `batch_size` and `lr`
are for the global batch: a DDP job splits the batch over its processes, so it trains like a
single process would.

After every epoch the full state is checkpointed; `resume: auto` continues from the last
checkpoint when it was made with the same config and data, and with a fixed seed a resumed CPU run
ends with exactly the weights of an uninterrupted one (every random draw is seeded per epoch).
On SIGUSR1/SIGTERM (SLURM's time-limit warning, preemption) the run finishes its step,
checkpoints mid-epoch and exits for a retry (`cvpipe.preemption`).
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch.utils.data.distributed import DistributedSampler

from cvpipe import calibration, checkpoint, distributed, provenance, runtime, staging
from cvpipe.checkpoint import EpochProgress
from cvpipe.data import read_stats
from cvpipe.distributed import DistEnv
from cvpipe.epoch import epoch_seed, evaluate_split, train_one_epoch
from cvpipe.errors import CvpipeError, Preempted
from cvpipe.parts import Parts, build_parts
from cvpipe.preemption import StopRequest
from cvpipe.runfiles import RunFiles
from cvpipe.settings import TrainConfig, cache_side

log = logging.getLogger(__name__)


def device_preference(cfg: TrainConfig) -> str:
    """The device setting `distributed.init` gets: `gpus: 0` means the CPU under `device: auto`.

    Without this, `auto` would train on `cuda:0` wherever a GPU exists, bypassing the GPU locks
    that `gpus > 0` takes (`cvpipe gpus`); only an explicit `device: cuda` overrides `gpus: 0`.
    """
    if cfg.device == "auto" and cfg.gpus == 0:
        return "cpu"
    return cfg.device


# History column -> what `evaluate_split` calls it; `ema_` + column for the EMA's.
VAL_COLUMNS = {"val_loss": "loss", "val_acc": "acc", "val_macro_f1": "macro_f1"}


def _scores(row: dict, weights: str) -> dict:
    """The validation scores of `weights` ("model" or "ema") in a history row, as `val_*`."""
    prefix = "ema_" if weights == "ema" else ""
    return {key: row[prefix + key] for key in VAL_COLUMNS}


def _offer(row: dict, has_ema: bool, monitor: str) -> str:
    """Which weights an epoch offers as its best: the EMA's where they score better than the
    model's on `monitor` (a tie: lower val loss; still tied: the model's)."""
    if has_ema and _improves(_scores(row, "ema"), _scores(row, "model"), monitor):
        return "ema"
    return "model"


def _best(run: _Run) -> dict:
    """The best epoch so far; after `_fit` there is one (every run trains at least one epoch)."""
    if run.best is None:
        raise RuntimeError("no epoch has finished, so there is no best one")
    return run.best


def _improves(row: dict, best: dict, monitor: str) -> bool:
    """Is this epoch better than the best so far? Ties on the monitor go to lower val loss."""
    sign = -1.0 if monitor == "val_loss" else 1.0
    new, old = sign * row[monitor], sign * best[monitor]
    if math.isnan(new):
        return False
    return new > old or math.isnan(old) or (new == old and row["val_loss"] < best["val_loss"])


def train(
    cfg: TrainConfig,
    cache_dir: str | Path,
    model_path: str | Path,
    history_path: str | Path,
    provenance_path: str | Path | None = None,
    threads: int | None = None,
    cache_scratch: str | None = None,
) -> dict[str, Any]:
    """Train one experiment; returns the best epoch's validation metrics.

    Reads `cache_dir` (the preprocess stage's output for the experiment's cache size: the
    workflow's `cvpipe.settings.cache_side`; with `cache_size` auto any side >= image_size is
    taken, training crops image_size from it), or its copy in the node-local folder
    `cache_scratch` (`cvpipe.staging`); writes `model_path`, `history_path` and
    `provenance_path`, plus checkpoints and TensorBoard events beside the model.
    """
    started = time.time()
    runtime.set_threads(threads, per_local_process=True)
    if cfg.deterministic:
        # cuBLAS needs this for deterministic matmuls (PyTorch "Reproducibility" notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    env = distributed.init(device_preference(cfg))
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        if cache_scratch:
            cache_dir = staging.stage_cache(cache_dir, cache_scratch, env)
        return _train(cfg, cache_dir, model_path, history_path, provenance_path, env, started)
    finally:
        distributed.shutdown()


def _check_inputs(cfg: TrainConfig, cache_dir: str | Path, env: DistEnv) -> dict:
    stats = read_stats(cache_dir)
    side = stats["image_size"]  # the cache's side: image_size, or larger for random crops
    if side < cfg.image_size or cfg.cache_size not in (None, side):
        raise CvpipeError(
            f"{cache_dir} holds {side} px images but image_size is {cfg.image_size} and "
            f"cache_size {cfg.cache_size or 'auto'} (the workflow's cache for these settings: "
            f"{cache_side(cfg.as_dict(), stats['resize'])} px)"
        )
    if cfg.batch_size % env.world_size:
        raise CvpipeError(
            f"batch_size {cfg.batch_size} does not split evenly over {env.world_size} processes"
        )
    return stats


def _train(
    cfg: TrainConfig,
    cache_dir: str | Path,
    model_path: str | Path,
    history_path: str | Path,
    provenance_path: str | Path | None,
    env: DistEnv,
    started: float,
) -> dict[str, Any]:
    stats = _check_inputs(cfg, cache_dir, env)
    if env.device.type == "cuda":
        # Autotuned convolutions are faster but may pick different kernels run to run.
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cudnn.deterministic = cfg.deterministic
    elif cfg.gpus > 0:
        log.warning("gpus: %d, but no CUDA device is visible: training on %s", cfg.gpus, env.device)
    parts = build_parts(cfg, stats, cache_dir, env)
    files = RunFiles(model_path, history_path, env)
    run = _start_or_resume(cfg, stats, parts, files, env)
    effective = _effective_settings(cfg, parts, env, started)
    _fit(run)
    _write_model(run, stats)
    if provenance_path:
        _write_provenance(run, provenance_path, stats, effective)
    return _best(run)["metrics"]


@dataclass
class _Run:
    """A run in progress: its settings, parts and files; where it stands (the epoch to start
    at and how far into it, the history, the best epoch); what a checkpoint must match."""

    cfg: TrainConfig
    parts: Parts
    files: RunFiles
    env: DistEnv
    identity: dict
    start_epoch: int = 0
    progress: EpochProgress = field(default_factory=EpochProgress)
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    resumed: bool = False


def _start_or_resume(
    cfg: TrainConfig, stats: dict, parts: Parts, files: RunFiles, env: DistEnv
) -> _Run:
    """A fresh start, or, under `resume: auto`, `last.pt` restored into `parts` if it was made
    with the same config, data and runtime."""
    data_identity = {k: stats[k] for k in ("manifest_sha256", "image_size", "resize")}
    # Device type and autocast dtype are part of what resumes: the augmentation generator's state
    # differs in kind between CPU and CUDA, and a GradScaler is enabled for fp16 only.
    run_on = {"device_type": env.device.type, "amp": parts.amp}
    identity = {"config": cfg.identity(), "data": data_identity, "runtime": run_on}
    run = _Run(cfg, parts, files, env, identity)
    if cfg.resume == "never":
        return run
    resumed = checkpoint.try_resume(files.last_checkpoint, identity, cfg.epochs)
    if not resumed:
        return run
    checkpoint.restore(parts, resumed, env)
    run.history, run.best, run.resumed = resumed["history"], resumed["best"], True
    if resumed["progress"]:  # stopped mid-epoch: continue that epoch
        run.start_epoch, run.progress = resumed["epoch"], EpochProgress(**resumed["progress"])
    else:
        run.start_epoch = resumed["epoch"] + 1
    return run


def _effective_settings(cfg: TrainConfig, parts: Parts, env: DistEnv, started: float) -> dict:
    """How the run is laid out over processes (provenance's `training`), logged once."""
    effective = {
        "world_size": env.world_size,
        "global_batch": cfg.batch_size,
        "per_process_batch": cfg.batch_size // env.world_size,
        "lr": cfg.lr,
        "amp_dtype": parts.amp,
        "steps_per_epoch": len(parts.train_loader),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "started_unix": started,
    }
    log.info(
        "%s on %s x %d: global batch %d (%d per process), effective lr %.3g, amp %s,"
        " %d steps/epoch",
        cfg.model, env.device, env.world_size, cfg.batch_size, effective["per_process_batch"],
        cfg.lr, parts.amp, effective["steps_per_epoch"],
    )  # fmt: skip
    return effective


def _run_epoch(run: _Run, epoch: int, stop: StopRequest) -> dict | None:
    """Train one epoch and validate; returns the history row (the same on every rank), or None
    if a stop was requested mid-epoch (`run.progress` then says where it stopped).

    A fresh epoch seeds its random draws from (seed, epoch, rank); a resumed one continues
    with the RNG states restored from the checkpoint and skips the batches already done.
    """
    parts, cfg, env, progress = run.parts, run.cfg, run.env, run.progress
    if progress.batches == 0:
        torch.manual_seed(epoch_seed(cfg.seed, epoch, env.rank))
        parts.aug_generator.manual_seed(epoch_seed(cfg.seed, epoch, env.rank))
    sampler = parts.train_loader.sampler
    assert isinstance(sampler, DistributedSampler), sampler  # as data.build_loader makes it
    sampler.set_epoch(epoch)
    todo = itertools.islice(parts.train_loader, progress.batches, None)
    total = len(parts.train_loader) - progress.batches
    batches = run.files.progress(todo, f"epoch {epoch + 1}/{cfg.epochs}", total=total)
    started = time.perf_counter()
    fit = train_one_epoch(parts, batches, env, progress, stop.due)
    progress.seconds += time.perf_counter() - started
    if fit["stopped"]:
        return None
    return {
        "epoch": epoch + 1,
        "lr": parts.optimizer.param_groups[0]["lr"],
        "train_loss": fit["loss"],
        "train_acc": fit["acc"],
        **_validate(run),
        "epoch_seconds": round(progress.seconds, 3),
        "train_images_per_s": round(len(parts.train_loader) * cfg.batch_size / progress.seconds, 1),
    }


def _validate(run: _Run) -> dict[str, float]:
    """The history's validation columns: the model's (`val_*`), and its EMA's (`ema_val_*`)
    where the run keeps one."""
    parts, env = run.parts, run.env
    columns = {}
    models = {"": parts.wrapped}
    if parts.ema is not None:
        parts.ema.sync_buffers(env)  # every rank evaluates (and rank 0 saves) the same EMA
        models["ema_"] = parts.ema.module
    for prefix, model in models.items():
        val = evaluate_split(parts, parts.val_loader, env, model)
        columns.update({f"{prefix}{key}": val[name] for key, name in VAL_COLUMNS.items()})
    return columns


def _fit(run: _Run) -> None:
    """Train from where `run` stands to the last epoch, checkpointing after each; a stop
    request (`cvpipe.preemption`) checkpoints and raises `Preempted`."""
    files = run.files
    files.open_tensorboard(purge_step=run.start_epoch + 1 if run.resumed else None)
    stop = StopRequest(run.env)
    stop.install()
    try:
        for epoch in range(run.start_epoch, run.cfg.epochs):
            if stop.requested():  # arrived during validation or checkpointing: all is saved
                raise Preempted(f"stopped by {stop.describe()} after epoch {epoch} (checkpointed)")
            row = _run_epoch(run, epoch, stop)
            if row is None:
                _stop_mid_epoch(run, epoch, stop)
            run.progress = EpochProgress()
            _end_epoch(run, epoch, row)
        files.hparams(run.cfg.as_dict(), _final_scores(run), step=run.cfg.epochs)
    finally:
        stop.uninstall()
        files.close()


def _final_scores(run: _Run) -> dict[str, float]:
    """The saved weights' validation scores (`best/val_*`) and epoch, for TensorBoard's HParams."""
    best = _best(run)
    scores = _scores(best["metrics"], best.get("weights", "model"))
    return {f"best/{key}": float(value) for key, value in scores.items()} | {
        "best/epoch": float(best["epoch"])
    }


def _checkpoint(run: _Run, epoch: int, progress: EpochProgress | None = None) -> None:
    """Save `last.pt` (a collective call: every rank makes it)."""
    state = checkpoint.training_state(
        run.parts, epoch, run.history, run.best, run.identity, run.cfg.as_dict(), run.env, progress
    )
    run.files.save_checkpoint(run.files.last_checkpoint, state)


def _stop_mid_epoch(run: _Run, epoch: int, stop: StopRequest) -> NoReturn:
    """Checkpoint the position inside `epoch` and raise `Preempted` (on every rank)."""
    _checkpoint(run, epoch, run.progress)
    # The other ranks must not exit first: torchrun would then SIGTERM rank 0,
    # possibly before its checkpoint is on disk.
    distributed.barrier(run.env)
    raise Preempted(
        f"stopped by {stop.describe()} in epoch {epoch + 1} after {run.progress.batches} "
        f"of {len(run.parts.train_loader)} batches; checkpointed to "
        f"{run.files.last_checkpoint}. Run again (Snakemake retries) to resume there."
    )


def _end_epoch(run: _Run, epoch: int, row: dict) -> None:
    """Record a finished epoch: best.pt if it improved, last.pt, history, TensorBoard, log."""
    cfg, files = run.cfg, run.files
    run.history.append(row)
    offer = _offer(row, run.parts.ema is not None, cfg.monitor)
    best = run.best
    # A best epoch saved before EMA existed has no "weights": the model's.
    improved = best is None or _improves(
        _scores(row, offer), _scores(best["metrics"], best.get("weights", "model")), cfg.monitor
    )
    if improved:
        run.best = {"epoch": epoch + 1, "metrics": row, "weights": offer}
        source = run.parts.ema.module if offer == "ema" and run.parts.ema else run.parts.model
        files.save_checkpoint(files.best_checkpoint, {"model": source.state_dict(), "epoch": epoch})
    _checkpoint(run, epoch)
    files.write_history(run.history)
    files.scalars(epoch + 1, {f"epoch/{k}": v for k, v in row.items() if k != "epoch"})
    best_note = ("  *best (EMA)" if offer == "ema" else "  *best") if improved else ""
    _log_epoch(run, epoch, row, best_note)


def _log_epoch(run: _Run, epoch: int, row: dict, best: str) -> None:
    ema = ""
    if "ema_val_loss" in row:
        ema = f" | EMA val loss {row['ema_val_loss']:.4f} acc {row['ema_val_acc']:.4f}"
    log.info(
        "epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f macro-F1 %.4f%s"
        " | %.1f img/s%s",
        epoch + 1, run.cfg.epochs, row["train_loss"], row["train_acc"], row["val_loss"],
        row["val_acc"], row["val_macro_f1"], ema, row["train_images_per_s"], best,
    )  # fmt: skip


def _fit_temperature(run: _Run, weights: dict) -> dict:
    """Temperature scaling of the best weights, fitted on the validation split: every rank
    runs its share of the split, the NLL sums are added over ranks (a collective call)."""
    model = copy.deepcopy(run.parts.model)  # the plain model: no DDP collectives per batch
    model.load_state_dict(weights)
    parts = run.parts
    logits, labels = calibration.collect_logits(
        model, parts.val_loader, parts.eval_transform, parts.autocast, run.env.device
    )
    fit = calibration.fit_temperature(
        logits, labels, lambda t: distributed.all_reduce_sum(t, run.env)
    )
    log.info(
        "temperature %.4f fitted on %d validation images: NLL %s -> %s",
        fit["temperature"], fit["images"], fit["val_nll"], fit["val_nll_scaled"],
    )  # fmt: skip
    return fit


def _write_model(run: _Run, stats: dict) -> None:
    """The history, and the model file: the best epoch's weights with what evaluation needs,
    and the temperature that calibrates them (`cvpipe.calibration`)."""
    cfg, files = run.cfg, run.files
    distributed.barrier(run.env)  # rank 0 has written best.pt before anyone reads it
    best_weights = checkpoint.load(files.best_checkpoint, map_location="cpu")["model"]
    fit = _fit_temperature(run, best_weights)
    files.write_history(run.history)
    files.save_checkpoint(
        files.model_path,
        {
            "format_version": checkpoint.FORMAT_VERSION,
            "model": best_weights,
            "model_name": cfg.model,
            "classes": stats["classes"],
            "image_size": cfg.image_size,
            "cache_size": stats["image_size"],
            "resize": stats["resize"],
            "mean": run.parts.mean,
            "std": run.parts.std,
            "epoch": _best(run)["epoch"],
            "weights": _best(run).get("weights", "model"),  # the model's or their EMA
            "val_metrics": _best(run)["metrics"],
            "config": cfg.as_dict(),
            "manifest_sha256": stats["manifest_sha256"],
            "temperature": fit.pop("temperature"),
            "calibration_fit": fit,
        },
    )


def _write_provenance(run: _Run, path: str | Path, stats: dict, effective: dict) -> None:
    """provenance.json: code, data, software and machine, and how the run was laid out (and
    which weights the model file holds, for readers without torch such as the model card)."""
    effective["finished_unix"] = time.time()
    effective["saved_weights"] = _best(run).get("weights", "model")
    record = provenance.collect(
        "train", run.cfg.as_dict(), stats["manifest_sha256"], run.env.device, training=effective
    )
    run.files.write_json(path, record)
