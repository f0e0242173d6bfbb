"""Classification metrics: the evaluate stage's full report and training's per-epoch summary.

`classification_report` (NumPy, evaluate): `log_loss` is the mean cross-entropy of the true
class (probabilities clipped at 1e-15); per-class precision/recall/F1 follow scikit-learn's
definitions (0 where undefined); ROC-AUC is one-vs-rest, computed from ranks (the Mann-Whitney U
statistic, ties averaged), and None for a class that is absent from, or the only class in, the
labels.

`torch_confusion` and `summarize_confusion` (torch, training's validation): the same confusion
matrix, accuracy and macro-F1, computed on the device batch by batch so that DDP can sum the
matrix over ranks without a copy to the host.
"""

from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    flat = np.asarray(y_true) * num_classes + np.asarray(y_pred)
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def torch_confusion(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`confusion_matrix` for tensors, on their device."""
    flat = labels * num_classes + preds
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def summarize_confusion(cm: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 from a confusion matrix (rows: true class, columns: predicted).

    The same definitions as `classification_report` (0 where a class was never predicted or
    never present); clamping the denominators instead of masking keeps it on the device.
    """
    cm = cm.double()
    tp = cm.diag()
    precision = tp / cm.sum(0).clamp(min=1)
    recall = tp / cm.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {"acc": (tp.sum() / cm.sum().clamp(min=1)).item(), "macro_f1": f1.mean().item()}


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x))
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    return ranks


def roc_auc(is_positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve of `score` for the binary labels `is_positive`."""
    pos = int(is_positive.sum())
    neg = len(is_positive) - pos
    if pos == 0 or neg == 0:
        return None
    ranks = _average_ranks(np.asarray(score, dtype=np.float64))
    return float((ranks[is_positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def classification_report(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support/ROC-AUC, macro averages, confusion matrix."""
    y_true = np.asarray(y_true)
    y_pred = probs.argmax(1)
    n = len(classes)
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    aucs = [roc_auc(y_true == i, probs[:, i]) for i in range(n)]
    defined = [a for a in aucs if a is not None]
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "roc_auc": aucs[i],
        }
        for i, name in enumerate(classes)
    }
    true_prob = probs[np.arange(len(y_true)), y_true] if len(y_true) else np.ones(1)
    return {
        "accuracy": float(tp.sum() / max(len(y_true), 1)),
        "log_loss": float(-np.log(np.clip(true_prob, 1e-15, 1.0)).mean()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "macro_roc_auc": float(np.mean(defined)) if defined else None,
        "num_samples": len(y_true),
        "classes": list(classes),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }
