"""Metrics agree with scikit-learn's definitions."""

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from cvpipe.metrics import classification_report, summarize_confusion, torch_confusion


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, k = 200, 4
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs = np.round(probs, 2)  # creates ties, which the AUC must average
    classes = [f"c{i}" for i in range(k)]
    report = classification_report(y, probs, classes)
    pred = probs.argmax(1)
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert report["macro_f1"] == pytest.approx(sk.f1_score(y, pred, average="macro"))
    p, r, f, s = sk.precision_recall_fscore_support(y, pred, zero_division=0)
    for i, c in enumerate(classes):
        assert report["per_class"][c]["precision"] == pytest.approx(p[i])
        assert report["per_class"][c]["recall"] == pytest.approx(r[i])
        assert report["per_class"][c]["f1"] == pytest.approx(f[i])
        assert report["per_class"][c]["support"] == s[i]
        assert report["per_class"][c]["roc_auc"] == pytest.approx(
            sk.roc_auc_score(y == i, probs[:, i])
        )
    assert report["confusion_matrix"] == sk.confusion_matrix(y, pred).tolist()


def test_absent_class_has_no_auc_and_zero_scores():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0], [0.3, 0.3, 0.4]])
    report = classification_report(y, probs, ["a", "b", "c"])
    assert report["per_class"]["c"]["roc_auc"] is None
    assert report["per_class"]["c"]["support"] == 0
    assert report["per_class"]["b"]["roc_auc"] == pytest.approx(0.75)  # 3 of 4 pairs ranked right
    assert report["macro_roc_auc"] == pytest.approx((1.0 + 0.75) / 2)
    assert report["accuracy"] == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [0, 1])
def test_training_summary_agrees_with_the_report(seed):
    """history.csv's val_acc/val_macro_f1 and metrics.json's use the same definitions."""
    rng = np.random.default_rng(seed)
    k = 5
    y = rng.integers(0, k - 1, 60)  # class k-1 never occurs: its F1 is 0 in both
    probs = rng.dirichlet(np.ones(k), 60)
    report = classification_report(y, probs, [f"c{i}" for i in range(k)])
    cm = torch_confusion(torch.from_numpy(y), torch.from_numpy(probs.argmax(1)), k)
    assert cm.tolist() == report["confusion_matrix"]
    summary = summarize_confusion(cm)
    assert summary["acc"] == pytest.approx(report["accuracy"])
    assert summary["macro_f1"] == pytest.approx(report["macro_f1"])
