"""The one place a training run writes files, logs metrics and shows progress.

Every method is a no-op on ranks other than 0, so the training loop never branches on the rank,
and every file is written atomically. Layout, next to the model file the workflow asks for:

    <model>.pt              best weights + what inference needs (written at the end)
    <history>.csv           one row per completed epoch (rewritten each epoch)
    checkpoints/last.pt     full training state after the latest epoch (for resume)
    checkpoints/best.pt     weights of the best epoch so far
    tensorboard/            TensorBoard event files (scalars per epoch; at the end the run's
                            hyperparameters and best scores for the HParams tab)
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tqdm import tqdm

from cvpipe import atomic, checkpoint
from cvpipe.distributed import DistEnv

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger(__name__)
T = TypeVar("T")


class RunFiles:
    """Rank-aware, atomic writer for one training run's outputs."""

    def __init__(self, model_path: str | Path, history_path: str | Path, env: DistEnv) -> None:
        self.model_path = Path(model_path)
        self.history_path = Path(history_path)
        self.checkpoint_dir = self.model_path.parent / "checkpoints"
        self.tensorboard_dir = self.model_path.parent / "tensorboard"
        self.last_checkpoint = self.checkpoint_dir / "last.pt"
        self.best_checkpoint = self.checkpoint_dir / "best.pt"
        self.enabled = env.is_main
        self._tb: SummaryWriter | None = None

    def save_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        if self.enabled:
            checkpoint.save(path, state)

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        if not self.enabled or not rows:
            return
        atomic.write_csv(self.history_path, list(rows[0]), rows)

    def write_json(self, path: str | Path, obj: Any) -> None:
        if self.enabled:
            atomic.write_json(path, obj)

    def open_tensorboard(self, purge_step: int | None) -> None:
        """Start the event writer; `purge_step` drops events a killed run logged past it."""
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.tensorboard_dir), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._tb is not None:
            for tag, value in values.items():
                self._tb.add_scalar(tag, value, step)
            self._tb.flush()

    def hparams(self, params: dict[str, Any], scores: dict[str, float], step: int) -> None:
        """The run's settings and final `scores` for TensorBoard's HParams tab, in this run's
        own event file, plus the scores as scalars (the tab reads a metric's value from them).

        Not `SummaryWriter.add_hparams`: that writes into a new timestamped folder below the log
        dir, a stray extra run per call (pytorch/pytorch#32651).
        """
        if self._tb is None:
            return
        from torch.utils.tensorboard.summary import hparams

        writer = self._tb._get_file_writer()
        for summary in hparams(_hparam_values(params), scores):
            writer.add_summary(summary)
        self.scalars(step, scores)

    def progress(self, iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        """tqdm on rank 0 (sparse updates when stderr is a log file), the bare iterable else."""
        if not self.enabled:
            return iter(iterable)
        interactive = sys.stderr.isatty()
        return iter(
            tqdm(
                iterable,
                desc=desc,
                total=total,
                file=sys.stderr,
                mininterval=0.5 if interactive else 30,
                leave=interactive,
                dynamic_ncols=True,
            )
        )

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _hparam_values(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Settings as HParams values: nested keys dotted (`augment.preset`), numbers and strings
    as they are, anything else (None, booleans, lists) as its JSON text."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_hparam_values(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            out[prefix + key] = value
        else:
            out[prefix + key] = json.dumps(value)
    return out
