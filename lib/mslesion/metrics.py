"""Lesion-wise detection metrics and overlap scores for binary lesion masks.

A lesion is a connected component (26-connectivity) of at least ``min_voxels`` voxels. A true lesion counts as
detected when at least ``min_overlap`` of its voxels are predicted; a predicted lesion counts as correct when
at least ``min_overlap`` of its voxels are true lesion (10 %, as in the MSSEG challenge's detection rule), so
one prediction sprawling over the brain does not score as a perfect detector. Sensitivity is taken over true
lesions, PPV over predicted lesions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def lesion_components(mask: np.ndarray, min_voxels: int = 1) -> tuple[np.ndarray, int]:
    """Connected lesions of a mask, renumbered 1..n after dropping those smaller than ``min_voxels``."""
    structure = _FULL_CONNECTIVITY[(slice(None),) * mask.ndim] if mask.ndim == 3 else None
    labels, count = ndimage.label(np.asarray(mask) > 0, structure=structure)
    if min_voxels > 1 and count:
        sizes = np.bincount(labels.ravel())
        keep = np.flatnonzero(sizes >= min_voxels)
        keep = keep[keep > 0]
        lookup = np.zeros(count + 1, dtype=np.int32)
        lookup[keep] = np.arange(1, keep.size + 1)
        labels, count = lookup[labels], int(keep.size)
    return labels, int(count)


def crop_to_mask(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bounding box of a volume's nonzero voxels and its corner (voxel index): labelling the components of a
    whole brain is about 10x slower than labelling the box around its lesions."""
    nonzero = volume > 0
    if not nonzero.any():
        return volume[:0, :0, :0], np.zeros(3)
    corner, upper = [], []
    for axis in range(3):
        hits = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis)))
        corner.append(hits[0])
        upper.append(hits[-1] + 1)
    box = tuple(slice(a, b) for a, b in zip(corner, upper, strict=True))
    return volume[box], np.asarray(corner, dtype=float)


def without_small_lesions(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """``mask`` (any integer label map) with the connected lesions smaller than ``min_voxels`` set to 0."""
    mask = np.asarray(mask)
    if min_voxels <= 1:
        return mask
    box, corner = crop_to_mask(mask)
    if box.size == 0:
        return mask
    components, _ = lesion_components(box, min_voxels)
    out = np.zeros_like(mask)
    region = tuple(slice(int(c), int(c) + n) for c, n in zip(corner, box.shape, strict=True))
    out[region] = np.where(components > 0, box, 0)
    return out


@dataclass(frozen=True)
class LesionScores:
    true_lesions: int
    predicted_lesions: int
    detected: int          # true lesions touched by the prediction
    correct: int           # predicted lesions touching a true lesion
    sensitivity: float
    ppv: float
    f1: float
    dice: float

    def as_dict(self) -> dict:
        return asdict(self)


def _ratio(numerator: int, denominator: int, empty: float) -> float:
    return numerator / denominator if denominator else empty


def dice(truth: np.ndarray, prediction: np.ndarray) -> float:
    """Voxel-wise Dice; 1.0 when both masks are empty."""
    t, p = np.asarray(truth) > 0, np.asarray(prediction) > 0
    total = int(t.sum()) + int(p.sum())
    return 2.0 * int(np.logical_and(t, p).sum()) / total if total else 1.0


def _overlapping(components: np.ndarray, count: int, other: np.ndarray, min_overlap: float) -> int:
    """How many components have at least ``min_overlap`` of their voxels inside ``other``."""
    if not count:
        return 0
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    inside = np.bincount(components[other].ravel(), minlength=count + 1)[1:]
    return int(np.sum((inside > 0) & (inside >= min_overlap * sizes)))


def lesion_scores(truth: np.ndarray, prediction: np.ndarray, min_voxels: int = 3,
                  min_overlap: float = 0.1) -> LesionScores:
    """Lesion-wise sensitivity, PPV and F1, plus voxel Dice, of a predicted mask against the truth."""
    truth, prediction = np.asarray(truth) > 0, np.asarray(prediction) > 0
    if truth.shape != prediction.shape:
        raise ValueError(f"shapes differ: truth {truth.shape}, prediction {prediction.shape}")
    true_labels, n_true = lesion_components(truth, min_voxels)
    pred_labels, n_pred = lesion_components(prediction, min_voxels)
    detected = _overlapping(true_labels, n_true, prediction, min_overlap)
    correct = _overlapping(pred_labels, n_pred, truth, min_overlap)
    sensitivity = _ratio(detected, n_true, 1.0)
    ppv = _ratio(correct, n_pred, 1.0 if n_true == 0 else 0.0)
    f1 = 2 * sensitivity * ppv / (sensitivity + ppv) if sensitivity + ppv else 0.0
    return LesionScores(n_true, n_pred, int(detected), int(correct), sensitivity, ppv, f1, dice(truth, prediction))


COUNT_KEYS = ("studies", "true_lesions", "predicted_lesions", "detected", "correct", "dice_sum")


def count_scores(scores: list[LesionScores]) -> dict[str, float]:
    """The additive part of a cohort's scores (sums a process group can add up): lesion counts and Dice sum."""
    return {"studies": len(scores), "true_lesions": sum(s.true_lesions for s in scores),
            "predicted_lesions": sum(s.predicted_lesions for s in scores),
            "detected": sum(s.detected for s in scores), "correct": sum(s.correct for s in scores),
            "dice_sum": float(sum(s.dice for s in scores))}


def pooled_scores(counts: dict[str, float]) -> dict[str, float]:
    """Lesion-wise rates over the pooled lesion counts of a cohort (a study with 2 lesions does not weigh as
    much as one with 30), mean Dice and false positives per scan."""
    if not counts or not counts.get("studies"):
        return {}
    sensitivity = _ratio(int(counts["detected"]), int(counts["true_lesions"]), 1.0)
    ppv = _ratio(int(counts["correct"]), int(counts["predicted_lesions"]), 1.0 if not counts["true_lesions"] else 0.0)
    f1 = 2 * sensitivity * ppv / (sensitivity + ppv) if sensitivity + ppv else 0.0
    return {**{k: counts[k] for k in COUNT_KEYS if k != "dice_sum"}, "sensitivity": sensitivity, "ppv": ppv,
            "f1": f1, "dice": counts["dice_sum"] / counts["studies"],
            "fp_per_scan": (counts["predicted_lesions"] - counts["correct"]) / counts["studies"]}
