"""ROC analysis of the paper: AUC, the Youden-optimal threshold, and the figures at a threshold."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def youden_threshold(truth: np.ndarray, score: np.ndarray) -> float:
    """The score threshold maximising sensitivity + specificity - 1 (Youden's J), a case being positive when its
    score is >= the threshold. The threshold sits halfway between the last score called positive and the next
    lower score, so cases scored near the boundary elsewhere are not decided by a tie. 0.5 without both classes."""
    truth, score = np.asarray(truth).astype(bool), np.asarray(score, dtype=np.float64)
    if truth.all() or not truth.any():
        return 0.5
    fpr, tpr, thresholds = roc_curve(truth, score)
    best = int(np.argmax(tpr - fpr))
    cut = float(thresholds[best])
    lower = score[score < cut]
    return (cut + float(lower.max())) / 2 if lower.size else cut


def figures(truth: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """AUC, and sensitivity, specificity, accuracy, PPV, NPV of ``score >= threshold`` (NaN where undefined)."""
    truth, score = np.asarray(truth).astype(bool), np.asarray(score, dtype=np.float64)
    called = score >= threshold
    tp, fp = int(np.sum(called & truth)), int(np.sum(called & ~truth))
    fn, tn = int(np.sum(~called & truth)), int(np.sum(~called & ~truth))

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    both = truth.any() and not truth.all()
    return {
        "auc": float(roc_auc_score(truth, score)) if both else float("nan"),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "accuracy": ratio(tp + tn, truth.size),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "threshold": float(threshold),
        "positives": int(truth.sum()),
        "negatives": int((~truth).sum()),
    }


def auc(truth: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve; NaN without both classes."""
    truth = np.asarray(truth).astype(bool)
    return float(roc_auc_score(truth, score)) if truth.any() and not truth.all() else float("nan")
