"""What an ideal reader of the phantoms' activity signs could reach: the ceiling of any image model on a cohort.

    python -m mslesion.enhancement_prediction.ceiling --train DIR --test DIR [DIR ...] [--json out.json]

The phantom generator records, per lesion and session, the non-contrast signs it painted (phantoms/activity.py:
T2/FLAIR gain, halo width and strength, T1 iso-intensity, margin blur), whether the lesion is new or enlarging,
its size, and whether it enhances. A logistic regression on those *recorded* parameters, fitted on the training
cohort's lesions, scores the test cohorts' lesions; a study is called by its most suspicious lesion. No image model
can beat this reader by much (it sees the exact parameters, not noisy pixels), so it tells whether a target AUC is
reachable on a cohort at all, and how much of the gap is the model's. Two readers: the signs a single session shows,
and those plus new/enlarging and size (what a previous session adds). Cohort folders are those of
``phantom_cohort`` (their ``truth/lesions.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from .roc import auc

SINGLE_SESSION = ("t2_gain", "halo_mm", "halo_gain", "t1_iso", "edge_mm", "blurred_edge")
WITH_PREVIOUS = (*SINGLE_SESSION, "new", "enlarging", "black_hole", "log_volume")


def lesion_features(lesion: dict) -> dict[str, float]:
    signs = lesion["signs"]
    return {"t2_gain": signs["t2_gain"] - 1, "halo_mm": signs["halo_mm"], "halo_gain": signs["halo_gain"],
            "t1_iso": 1 - signs["t1_hypo_scale"], "edge_mm": signs["edge_mm"] or 0.0,
            "blurred_edge": float(signs["edge_mm"] is not None), "new": float(lesion["new"]),
            "enlarging": float(lesion["enlarging"]), "black_hole": float(lesion["black_hole"]),
            "log_volume": float(np.log(lesion["volume_ml"] + 1e-4))}


def cohort_records(folder: Path) -> list[dict]:
    """Per study: enhancing or not, and its lesions' features and truth."""
    index = json.loads((Path(folder) / "truth" / "lesions.json").read_text())
    return [{"study": study, "enhancing": int(entry["enhancing"]),
             "lesions": [(lesion_features(lesion), int(lesion["enhancing"])) for lesion in entry["lesions"]]}
            for study, entry in sorted(index.items())]


def _matrix(studies: list[dict], names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    rows = [([f[n] for n in names], y) for s in studies for f, y in s["lesions"]]
    return np.array([r[0] for r in rows], dtype=np.float64), np.array([r[1] for r in rows])


def ceiling(train: list[dict], test: list[dict]) -> dict:
    """Lesion-wise and participant-wise AUC of the ideal readers on ``test``."""
    out = {"test_studies": len(test), "test_enhancing_studies": sum(s["enhancing"] for s in test)}
    for reader, names in (("single_session", SINGLE_SESSION), ("with_previous_session", WITH_PREVIOUS)):
        x, y = _matrix(train, names)
        model = LogisticRegression(max_iter=5000).fit(x, y)
        xt, yt = _matrix(test, names)
        study_scores = [float(model.predict_proba(_matrix([s], names)[0])[:, 1].max()) if s["lesions"] else 0.0
                        for s in test]
        out[reader] = {"lesion_auc": auc(yt, model.predict_proba(xt)[:, 1]),
                       "participant_auc": auc(np.array([s["enhancing"] for s in test]), np.array(study_scores))}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True, help="training cohort folder (fits the reader)")
    parser.add_argument("--test", type=Path, nargs="+", required=True, help="test cohort folders, pooled")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    test = [s for folder in args.test for s in cohort_records(folder)]
    report = ceiling(cohort_records(args.train), test)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
