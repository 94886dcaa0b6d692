"""Calibration of the participant-wise probability, and the figures that check it.

- ``fit_temperature``: temperature scaling (Guo et al. 2017) of the participant net's logit, p = sigmoid(z / T),
  fitted by minimising the log-loss on **validation studies only** (never the test studies). One parameter, so it
  cannot overfit a validation split of a few dozen studies the way isotonic regression would; it keeps the ranking
  (AUC unchanged). Bounded to [T_MIN, T_MAX]; without both classes, or with fewer than MIN_STUDIES validation
  studies, the temperature stays 1.
- ``brier``, ``reliability``: the Brier score (and the base rate's, the score of always answering the prevalence),
  and a reliability curve (equal-width probability bins: mean predicted vs observed frequency).
- ``bootstrap_auc``: a participant bootstrap percentile CI of an AUC (studies resampled by participant, so both
  visits of a subject travel together).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit

from .networks import PROBABILITY_CEILING, PROBABILITY_FLOOR
from .roc import auc

T_MIN, T_MAX = 0.1, 10.0
MIN_STUDIES = 8


def log_loss(truth: np.ndarray, logit: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of sigmoid(logit / temperature) (numerically stable)."""
    z = np.asarray(logit, dtype=np.float64) / temperature
    y = np.asarray(truth, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(truth: np.ndarray, logit: np.ndarray) -> float:
    """The temperature minimising the log-loss of sigmoid(logit / T) on these (validation) studies."""
    truth, logit = np.asarray(truth).astype(bool), np.asarray(logit, dtype=np.float64)
    if truth.size < MIN_STUDIES or truth.all() or not truth.any():
        return 1.0
    found = minimize_scalar(lambda log_t: log_loss(truth, logit, float(np.exp(log_t))),
                            bounds=(np.log(T_MIN), np.log(T_MAX)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


def calibrated(logit: np.ndarray, temperature: float) -> np.ndarray:
    """What the model answers: sigmoid(logit / T) clipped into [PROBABILITY_FLOOR, PROBABILITY_CEILING]."""
    return np.clip(expit(np.asarray(logit, dtype=np.float64) / temperature), PROBABILITY_FLOOR,
                   PROBABILITY_CEILING)


def brier(truth: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """Brier score, and that of always answering the observed base rate (a useful model scores below it)."""
    y = np.asarray(truth, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    if y.size == 0:
        return {"brier": float("nan"), "base_rate": float("nan"), "brier_base_rate": float("nan")}
    rate = float(y.mean())
    return {"brier": float(np.mean((p - y) ** 2)), "base_rate": rate, "brier_base_rate": rate * (1 - rate)}


def reliability(truth: np.ndarray, probability: np.ndarray, bins: int = 10) -> list[dict]:
    """Equal-width bins of the predicted probability: count, mean predicted, observed frequency (empty bins left
    out). The last bin includes 1.0."""
    y = np.asarray(truth, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            rows.append({"lo": b / bins, "hi": (b + 1) / bins, "count": int(inside.sum()),
                         "predicted": float(p[inside].mean()), "observed": float(y[inside].mean())})
    return rows


def expected_calibration_error(rows: list[dict]) -> float:
    """Count-weighted mean |observed - predicted| over the reliability bins."""
    total = sum(r["count"] for r in rows)
    return float(sum(r["count"] * abs(r["observed"] - r["predicted"]) for r in rows) / total) if total else float("nan")


def bootstrap_auc(truth: np.ndarray, score: np.ndarray, groups: np.ndarray, n: int = 2000, seed: int = 0,
                  level: float = 0.95) -> dict[str, float]:
    """AUC and its participant bootstrap percentile CI: ``groups`` (a participant per case) are resampled with
    replacement, each drawn participant bringing all its cases; resamples with one class only are skipped."""
    truth, score, groups = np.asarray(truth).astype(bool), np.asarray(score, dtype=np.float64), np.asarray(groups)
    point = auc(truth, score)
    names, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(names))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        picked = np.concatenate([members[g] for g in rng.integers(0, len(names), len(names))])
        t = truth[picked]
        if t.any() and not t.all():
            values.append(auc(t, score[picked]))
    if not values:
        return {"auc": point, "lo": float("nan"), "hi": float("nan"), "resamples": 0}
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return {"auc": point, "lo": float(lo), "hi": float(hi), "resamples": len(values)}
