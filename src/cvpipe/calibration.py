"""Confidence calibration: temperature scaling and the evaluate stage's calibration report.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") divides every
logit by one temperature T > 0: the predicted class, hence accuracy, F1 and the confusion
matrix, stay the same, only the confidence changes (T > 1 softens an over-confident model).

- Training fits T at its end (`fit_temperature`): the negative log-likelihood of the best model's
  validation logits is minimised over log T by a golden-section search on a fixed bracket with
  a fixed number of steps. NLL is convex in 1/T, so the search finds the one minimum, and it is
  deterministic; under DDP each rank keeps the logits of its share of the split and only the
  NLL sums travel (`reduce`), every rank making the same calls in the same order.
- Evaluation reports (`calibration_report`) the expected and maximum calibration error with 15
  equal-width confidence bins (torchmetrics' `MulticlassCalibrationError`, norm "l1" and
  "max") and the NLL, before and after scaling, plus the reliability diagram's bins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import numpy as np
import torch

N_BINS = 15
# The bracket of the search: T from 1/20 to 20 is far wider than trained networks need
# (Guo et al. report 1.1 to 3); a fit at an end means the model needs more than scaling.
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))
SEARCH_STEPS = 60  # the bracket shrinks by 0.618 a step: to ~1e-12 in log T


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Log class probabilities of `logits / temperature` (float64)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of `logits / temperature` (float64, rows sum to 1): what evaluate
    writes to predictions.csv and `cvpipe predict` returns."""
    return np.exp(log_softmax(logits, temperature))


def nll_sum(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Summed cross-entropy of `logits / temperature` (float64 scalar, on the logits' device)."""
    z = logits.double() / temperature
    return torch.nn.functional.cross_entropy(z, labels, reduction="sum")


def golden_section(f: Callable[[float], float], lo: float, hi: float, steps: int) -> float:
    """The minimiser of a unimodal `f` on [lo, hi], after `steps` golden-section steps."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(steps):
        if fa <= fb:  # the minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = f(a)
        else:  # in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return (lo + hi) / 2


@torch.no_grad()
def collect_logits(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    transform: Callable[[torch.Tensor], torch.Tensor],
    autocast: Callable,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits and labels of `model` (in eval mode) on uint8 `batches`, on `device`."""
    model.eval()
    logits, labels = [], []
    for images, y in batches:
        with autocast():
            out = model(transform(images.to(device, non_blocking=True)))
        logits.append(out.float())
        labels.append(y.to(device, non_blocking=True))
    if not logits:
        return torch.zeros(0, 0, device=device), torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat(logits), torch.cat(labels)


def fit_temperature(
    logits: torch.Tensor,
    labels: torch.Tensor,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> dict:
    """The temperature minimising the NLL of `logits` (this process's share of the split):
    {"temperature", "val_nll", "val_nll_scaled", "images"}.

    `reduce` sums a float64 tensor over processes in place (`distributed.all_reduce_sum`); it
    is called the same number of times on every rank whatever the data. No images: T = 1.
    """

    def mean_nll(log_t: float) -> float:
        total = torch.zeros(2, dtype=torch.float64, device=labels.device)
        if len(labels):
            total[0] = nll_sum(logits, labels, math.exp(log_t))
        total[1] = len(labels)
        total = reduce(total)
        return total[0].item() / max(total[1].item(), 1)

    count = torch.tensor([float(len(labels))], dtype=torch.float64, device=labels.device)
    images = int(reduce(count).item())
    if images == 0:
        return {"temperature": 1.0, "val_nll": None, "val_nll_scaled": None, "images": 0}
    log_t = golden_section(mean_nll, *LOG_T_BOUNDS, steps=SEARCH_STEPS)
    before, after = mean_nll(0.0), mean_nll(log_t)
    temperature = math.exp(log_t)
    if before <= after:  # no lower NLL than unscaled (within rounding): keep T = 1
        temperature, after = 1.0, before
    return {
        "temperature": temperature,
        "val_nll": before,
        "val_nll_scaled": after,
        "images": images,
    }


def calibration_error(probs: np.ndarray, labels: np.ndarray, norm: Literal["l1", "max"]) -> float:
    """torchmetrics' multiclass calibration error with `N_BINS` bins ("l1": ECE, "max": MCE)."""
    # Imported here: torchmetrics takes seconds to import, and training (which imports this
    # module for the fit) never needs it.
    from torchmetrics.classification import MulticlassCalibrationError

    metric = MulticlassCalibrationError(num_classes=probs.shape[1], n_bins=N_BINS, norm=norm)
    value = metric(torch.from_numpy(np.asarray(probs, np.float64)), torch.from_numpy(labels))
    return float(value)


def reliability_bins(probs: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Per confidence bin [i/15, (i+1)/15): mean confidence, accuracy and count (None for an
    empty bin), binned as torchmetrics bins them (confidences rounded to float32, its edges).

    torchmetrics gives a confidence of exactly 1.0 (in float32: above 1 - 6e-8) a bin of its
    own; here it joins the last one, so the ECE recomputed from these bins equals
    `calibration_error` (to float32 rounding) unless some confidence is 1.0.
    """
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = torch.linspace(0, 1, N_BINS + 1).numpy()  # torchmetrics' edges, float32
    binned = np.searchsorted(edges, confidence.astype(np.float32), side="right") - 1
    index = np.minimum(binned, N_BINS - 1)
    bins = []
    for i in range(N_BINS):
        members = index == i
        count = int(members.sum())
        bins.append(
            {
                "lower": i / N_BINS,
                "upper": (i + 1) / N_BINS,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
                "count": count,
            }
        )
    return bins


def calibration_report(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """ECE, MCE and NLL before and after scaling by `temperature`, and the reliability bins."""
    labels = np.asarray(labels, dtype=np.int64)
    report: dict = {"temperature": temperature, "n_bins": N_BINS}
    for suffix, t in (("", 1.0), ("_scaled", temperature)):
        log_probs = log_softmax(logits, t)
        probs = np.exp(log_probs)
        report |= {
            f"ece{suffix}": calibration_error(probs, labels, "l1"),
            f"mce{suffix}": calibration_error(probs, labels, "max"),
            f"nll{suffix}": float(-log_probs[np.arange(len(labels)), labels].mean()),
            f"reliability{suffix}": reliability_bins(probs, labels),
        }
    return report
