"""A lesion-level reader of the non-contrast signs of activity: measured features per lesion, a logistic regression.

    python -m mslesion.enhancement_prediction.lesion_reader --train DIR --test DIR [DIR ...] [--json F]

The slice classifier scores 3 mm slices; the signs of activity (phantoms/activity.py, and the radiology behind it)
belong to lesions: a lesion brighter on T2/FLAIR than the subject's other lesions, a faint oedema halo, T1
iso-intensity rather than a black hole, an ill-defined margin. This reader measures those on each connected lesion
of the mask, on the FLAIR's RAS 1 mm grid after ``slices.load_study`` (each sequence z-scored over the head):

- contrast on FLAIR, T2w and T1w against the median of a shell 3-7 mm around the lesion (normal tissue, other
  lesions left out), in units of that shell's robust spread;
- halo: the mean of a 0-2 mm shell against the same far shell (FLAIR, T2w, T1w);
- margin: mean FLAIR gradient on the lesion's boundary over its contrast (low: ill-defined), and the core-minus-rim
  difference on FLAIR and T2w;
- size (log voxels) and the spread of FLAIR and T1w inside the lesion;
- the same contrast, halo and margin features relative to the median lesion of the study (a subject's lesions share
  its lesion contrast; activity shows as a lesion that stands out from its neighbours).

A standardised logistic regression (scikit-learn, fitted offline) scores each lesion; a study is called by its
lesions with a noisy-OR, p = 1 - prod(1 - p_i), whose logit is temperature-scaled on validation subjects
(calibration.fit_temperature). The CLI fits it on one phantom cohort (``data.phantom_cohort`` folders) and scores
others with participant bootstrap CIs, so the reader can be compared with the slice model and with ``ceiling``'s
ideal reader on the same studies. Feature tables are cached per study under each cohort's ``lesion_tables/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from .calibration import bootstrap_auc, brier, calibrated, fit_temperature
from .roc import auc, figures, youden_threshold

logger = logging.getLogger(__name__)

FEATURES = ("flair_contrast", "t2_contrast", "t1_contrast", "flair_halo", "t2_halo", "t1_halo", "flair_edge",
            "flair_core_rim", "t2_core_rim", "log_voxels", "flair_spread", "t1_spread")
#: Features also given relative to the study's median lesion.
RELATIVE = ("flair_contrast", "t2_contrast", "t1_contrast", "flair_halo", "t2_halo", "flair_edge", "t2_core_rim",
            "flair_spread")
NEAR_MM = 2.0            # the halo shell: 0-2 mm outside the lesion
FAR_MM = (3.0, 7.0)      # the reference shell of normal tissue
MIN_REFERENCE_VOXELS = 10
MIN_ENHANCING_OVERLAP = 3  # voxels of the post-contrast label that make a lesion enhancing (training truth)


def _robust(values: np.ndarray) -> tuple[float, float]:
    """Median and a floor-bounded robust spread (1.4826 MAD + 0.05: z-scored images, never zero)."""
    centre = float(np.median(values))
    return centre, float(1.4826 * np.median(np.abs(values - centre)) + 0.05)


def lesion_table(flair: np.ndarray, t1: np.ndarray, t2: np.ndarray, lesion: np.ndarray,
                 enhancing: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per connected lesion (26-connected) of ``lesion``: ``features`` (L, len(FEATURES)), ``centroid`` (L, 3)
    voxel, ``voxels`` (L,), and with the post-contrast label ``enhancing`` (L,) 0/1. Lesions with too little normal
    tissue around them to measure against are left out."""
    mask = np.asarray(lesion) > 0
    components, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    images = {"flair": np.asarray(flair), "t2": np.asarray(t2), "t1": np.asarray(t1)}
    pad = int(FAR_MM[1]) + 1
    rows, centroids, sizes, truth = [], [], [], []
    for number, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        window = tuple(slice(max(b.start - pad, 0), min(b.stop + pad, n)) for b, n in zip(box, mask.shape,
                                                                                           strict=True))
        own = components[window] == number
        others = mask[window] & ~own
        outside = ndimage.distance_transform_edt(~own)
        inside = ndimage.distance_transform_edt(own)
        near = (outside > 0) & (outside <= NEAR_MM) & ~others
        far = (outside > FAR_MM[0]) & (outside <= FAR_MM[1]) & ~others
        if far.sum() < MIN_REFERENCE_VOXELS:
            continue
        rim, core = own & (inside <= 1), own & (inside > 1)
        boundary = own & ~ndimage.binary_erosion(own)
        f = {}
        for name, image in images.items():
            values = image[window]
            centre, spread = _robust(values[far])
            f[f"{name}_contrast"] = (values[own].mean() - centre) / spread
            f[f"{name}_halo"] = (values[near].mean() - centre) / spread if near.any() else 0.0
            if name in ("flair", "t1"):
                f[f"{name}_spread"] = values[own].std() / spread
            if name in ("flair", "t2"):
                lift = max(values[own].mean() - centre, 1e-3)
                f[f"{name}_core_rim"] = (values[core].mean() - values[rim].mean()) / lift if core.any() else 0.0
                if name == "flair":
                    gradient = np.sqrt(sum(g * g for g in np.gradient(values)))
                    f["flair_edge"] = gradient[boundary].mean() / lift
        f["log_voxels"] = float(np.log(own.sum()))
        rows.append([float(f[k]) for k in FEATURES])
        centroids.append(np.argwhere(own).mean(axis=0) + [w.start for w in window])
        sizes.append(int(own.sum()))
        if enhancing is not None:
            truth.append(int((np.asarray(enhancing)[window][own] > 0).sum() >= MIN_ENHANCING_OVERLAP))
    table = {"features": np.array(rows, dtype=np.float32).reshape(-1, len(FEATURES)),
             "centroid": np.array(centroids, dtype=np.float32).reshape(-1, 3),
             "voxels": np.array(sizes, dtype=np.int64)}
    if enhancing is not None:
        table["enhancing"] = np.array(truth, dtype=np.int64)
    return table


def design(features: np.ndarray) -> np.ndarray:
    """The reader's inputs: the features and, for RELATIVE, each minus the study's median lesion."""
    features = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))
    columns = [FEATURES.index(name) for name in RELATIVE]
    relative = features[:, columns] - (np.median(features[:, columns], axis=0) if len(features) else 0.0)
    return np.concatenate([features, relative], axis=1)


def noisy_or_logit(lesion_logits: np.ndarray) -> float:
    """logit of 1 - prod(1 - sigmoid(l_i)), computed in log space; a study without lesions scores very low."""
    lesion_logits = np.asarray(lesion_logits, dtype=np.float64)
    if lesion_logits.size == 0:
        return -20.0
    log_none = -np.sum(np.logaddexp(0.0, lesion_logits))  # log prod(1 - p_i)
    log_none = min(log_none, -1e-12)
    return float(np.log(-np.expm1(log_none)) - log_none)


class LesionReader:
    """Standardisation + logistic regression coefficients + the study logit's temperature (plain arrays, so they
    can be stored with weights or as JSON)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float,
                 temperature: float = 1.0, threshold: float = 0.5):
        self.mean, self.scale = np.asarray(mean, dtype=np.float64), np.asarray(scale, dtype=np.float64)
        self.coef, self.intercept = np.asarray(coef, dtype=np.float64), float(intercept)
        self.temperature, self.threshold = float(temperature), float(threshold)

    def lesion_logits(self, features: np.ndarray) -> np.ndarray:
        return ((design(features) - self.mean) / self.scale) @ self.coef + self.intercept

    def study_logit(self, features: np.ndarray) -> float:
        return noisy_or_logit(self.lesion_logits(features))

    def probability(self, features: np.ndarray) -> float:
        """The calibrated, clipped study probability (what the server answers)."""
        return float(calibrated(np.array([self.study_logit(features)]), self.temperature)[0])

    def as_dict(self) -> dict:
        return {"features": list(FEATURES), "relative": list(RELATIVE), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "coef": self.coef.tolist(), "intercept": self.intercept,
                "temperature": self.temperature, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: dict) -> LesionReader:
        if list(d["features"]) != list(FEATURES) or list(d["relative"]) != list(RELATIVE):
            raise ValueError("this lesion reader was fitted on other features; fit it again")
        return cls(d["mean"], d["scale"], d["coef"], d["intercept"], d["temperature"], d.get("threshold", 0.5))


def fit_reader(tables: list[dict], validation: list[dict] | None = None, c: float = 1.0) -> LesionReader:
    """Fits the lesion-wise logistic regression on ``tables`` (each with ``enhancing``), and on ``validation``
    tables (never the fitting ones) the study logit's temperature and the Youden threshold of the calibrated
    probability (left at 1 and 0.5 without them). A validation study's truth is its ``study_truth`` where the table
    has one: on a predicted mask that misses the enhancing lesion, no lesion of the table is enhancing, yet the study
    is."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([design(t["features"]) for t in tables])
    y = np.concatenate([t["enhancing"] for t in tables])
    if len(set(y.tolist())) < 2:
        raise ValueError("the reader needs enhancing and non-enhancing lesions to fit")
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    model = LogisticRegression(C=c, max_iter=5000).fit((x - mean) / scale, y)
    reader = LesionReader(mean, scale, model.coef_[0], model.intercept_[0])
    if validation:
        truth = np.array([int(t.get("study_truth", t["enhancing"].any())) for t in validation])
        logits = np.array([reader.study_logit(t["features"]) for t in validation])
        reader.temperature = fit_temperature(truth, logits)
        reader.threshold = youden_threshold(truth, calibrated(logits, reader.temperature))
    return reader


#: Where weights carry fitted readers: their metadata, under these keys (a reader does not depend on the CNN). The
#: features depend on where the lesion mask came from: flair_lesion's masks are tighter or wider than a drawn label
#: and merge a lesion with its halo, so a reader fitted on drawn (truth) masks read them at chance (shifted
#: participant AUC 0.49, 2026-12-07) while one fitted on flair_lesion's masks read them at 0.66 (0.74 refitted on
#: the masks of the current flair_lesion weights). One reader each; refit when flair_lesion's weights change.
METADATA_KEY = "lesion_reader"                        # fitted on drawn lesion labels (a saved label)
PREDICTED_MASK_KEY = "lesion_reader_predicted_mask"  # fitted on flair_lesion's masks (no saved label)
READER_KEYS = (METADATA_KEY, PREDICTED_MASK_KEY)


def reader_in(metadata: dict, predicted_mask: bool = False) -> LesionReader | None:
    """The reader stored with weights for this kind of lesion mask (the drawn-label one where no reader was fitted on
    predicted masks), or None (weights from before the reader, or fitted on other features)."""
    stored = (metadata.get(PREDICTED_MASK_KEY) if predicted_mask else None) or metadata.get(METADATA_KEY)
    if not stored:
        return None
    try:
        return LesionReader.from_dict(stored)
    except (KeyError, ValueError) as error:
        logger.warning("ignoring the lesion reader stored with these weights: %s", error)
        return None


def attach(path: Path, reader: LesionReader, figures: dict | None = None, key: str = METADATA_KEY) -> None:
    """Stores ``reader`` (and the figures it was measured with) in the metadata of the weights at ``path`` under
    ``key`` (READER_KEYS); the weights themselves are rewritten unchanged (atomically)."""
    import torch

    from .. import weights

    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload.setdefault("meta", {})[key] = {**reader.as_dict(), **({"figures": figures} if figures else {})}
    weights.save_atomic(payload, Path(path))


def answer(reader: LesionReader, table: dict, ras_affine: np.ndarray, limit: int = 10) -> dict:
    """The reader's part of the server's answer: study probability, decision at its threshold, and the lesions
    that drove it (most suspicious first; centroid in scanner RAS mm, volume in mm^3, lesion probability)."""
    features = table["features"]
    probability = reader.probability(features)
    lesion_p = calibrated(reader.lesion_logits(features), 1.0) if len(features) else np.zeros(0)
    affine = np.asarray(ras_affine, dtype=np.float64)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    lesions = [{"centroid_mm": [round(float(v), 1) for v in (affine @ np.append(c, 1.0))[:3]],
                "volume_mm3": round(float(n) * voxel_mm3, 1), "probability": round(float(p), 4)}
               for c, n, p in zip(table["centroid"], table["voxels"], lesion_p, strict=True)]
    lesions.sort(key=lambda r: -r["probability"])
    return {"probability": round(probability, 4),
            "decision": "enhancing" if probability >= reader.threshold else "not enhancing",
            "threshold": round(reader.threshold, 4), "temperature": round(reader.temperature, 4),
            "lesions_read": len(lesions), "lesions": lesions[:limit]}


def cohort_tables(folder: Path, segmenter=None) -> list[dict]:
    """The lesion table of every study of a ``data.phantom_cohort`` folder, with ``id``, ``subject`` and the study
    truth ``study_truth`` (any lesion of the drawn label overlapping the post-contrast label). Lesions are the drawn
    label's, or with ``segmenter`` (a callable (flair path, loaded FLAIR, device) -> mask, e.g. the server's
    FlairLesionSegmenter) the predicted mask's, their ``enhancing`` from the same post-contrast label. Cached under
    ``lesion_tables/`` (drawn) or ``lesion_tables_predicted-<tag>/`` (``segmenter.cache_tag``: its weights)."""
    import torch
    from monai.transforms import Compose

    from ..studies import T1, T2
    from ..unet.transforms import IMAGE
    from .data import LabelledStudy
    from .recipe import ENHANCEMENT_PREDICTION
    from .slices import ENHANCING, LESION, load_study

    folder = Path(folder)
    drawn = folder / "lesion_tables"
    cache = drawn if segmenter is None else folder / f"lesion_tables_predicted-{segmenter.cache_tag}"
    wanted = list(dict.fromkeys((drawn, cache)))  # one folder without a segmenter
    out = []
    for flair in sorted((folder / "studies").glob("*_FLAIR.nii.gz")):
        study_id = flair.name.removesuffix("_FLAIR.nii.gz")
        tables = {}
        for where in wanted:
            cached = where / f"{study_id}.npz"
            if cached.exists():
                with np.load(cached) as saved:
                    tables[where] = {k: saved[k] for k in saved.files}
        if len(tables) < len(wanted):
            study = LabelledStudy.from_folder(study_id, folder / "studies", folder / "truth")
            d = Compose(load_study(ENHANCEMENT_PREDICTION, with_lesion=True, with_truth=True))(dict(study.paths))
            images = [np.asarray(d[k])[0] for k in (IMAGE, T1, T2)]
            enhancing = np.asarray(d[ENHANCING])[0]
            masks = {drawn: np.asarray(d[LESION])[0]}
            if segmenter is not None:
                masks[cache] = segmenter(str(flair), d[IMAGE], torch.device("cpu"))[0].numpy()
            for where, mask in masks.items():
                if where not in tables:
                    tables[where] = lesion_table(*images, mask, enhancing)
                    where.mkdir(exist_ok=True)
                    np.savez_compressed(where / f"{study_id}.npz", **tables[where])
        out.append({**tables[cache], "id": study_id, "subject": study_id.split("_")[0].removeprefix("sub-"),
                    "study_truth": int(tables[drawn]["enhancing"].any())})
    return out


def score(reader: LesionReader, tables: list[dict]) -> dict:
    """Lesion-wise AUC, participant-wise AUC (bootstrap CI by subject) and Brier of the calibrated answer."""
    lesion_truth = np.concatenate([t["enhancing"] for t in tables])
    lesion_scores = np.concatenate([reader.lesion_logits(t["features"]) for t in tables])
    truth = np.array([t["study_truth"] for t in tables])
    logits = np.array([reader.study_logit(t["features"]) for t in tables])
    probability = calibrated(logits, reader.temperature)
    return {"studies": len(tables), "enhancing_studies": int(truth.sum()), "lesions": int(lesion_truth.size),
            "enhancing_lesions": int(lesion_truth.sum()), "lesion_auc": auc(lesion_truth, lesion_scores),
            "participant": bootstrap_auc(truth, logits, np.array([t["subject"] for t in tables])),
            "at_threshold": {k: v for k, v in figures(truth, probability, reader.threshold).items() if k != "auc"},
            **brier(truth, probability)}


def main(argv: list[str] | None = None) -> None:
    from .evaluate import split_validation

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True, help="training cohort folder (fits the reader)")
    parser.add_argument("--test", type=Path, nargs="+", required=True, help="test cohort folders, each and pooled")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="training subjects kept for the temperature")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--attach", type=Path, default=None,
                        help="store the fitted reader (and these figures) in the metadata of these weights")
    args = parser.parse_args(argv)
    tables = cohort_tables(args.train)
    fit_subjects, val_subjects = split_validation(sorted({t["subject"] for t in tables}), args.val_fraction, args.seed)
    reader = fit_reader([t for t in tables if t["subject"] in fit_subjects],
                        [t for t in tables if t["subject"] in val_subjects])
    report, pooled = {"reader": reader.as_dict(), "groups": {}}, []
    for folder in args.test:
        test = cohort_tables(folder)
        pooled += [{**t, "subject": f"{folder.name}/{t['subject']}"} for t in test]
        report["groups"][folder.name] = score(reader, test)
    report["groups"]["pooled"] = score(reader, pooled)
    for name, g in report["groups"].items():
        p = g["participant"]
        print(f"{name}: {g['studies']} studies ({g['enhancing_studies']} enhancing), lesion AUC {g['lesion_auc']:.3f}, "
              f"participant AUC {p['auc']:.3f} ({p['lo']:.2f}-{p['hi']:.2f}), sensitivity "
              f"{g['at_threshold']['sensitivity']:.2f} / specificity {g['at_threshold']['specificity']:.2f} at p >= "
              f"{reader.threshold:.2f}, Brier {g['brier']:.3f} (base rate {g['brier_base_rate']:.3f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.attach:
        attach(args.attach, reader, {"command": "python -m mslesion.enhancement_prediction.lesion_reader "
                                     + " ".join(str(a) for a in (argv if argv is not None else sys.argv[1:])),
                                     **{name: summary(g) for name, g in report["groups"].items()}})


def summary(group: dict) -> dict:
    """The figures of one scored group, rounded, for a model card or weights metadata."""
    p = group["participant"]
    return {"studies": group["studies"], "enhancing_studies": group["enhancing_studies"],
            "lesion_auc": round(group["lesion_auc"], 3), "participant_auc": round(p["auc"], 3),
            "participant_auc_ci": [round(p["lo"], 2), round(p["hi"], 2)], "brier": round(group["brier"], 3),
            "sensitivity": round(group["at_threshold"]["sensitivity"], 3),
            "specificity": round(group["at_threshold"]["specificity"], 3),
            "brier_base_rate": round(group["brier_base_rate"], 3)}


if __name__ == "__main__":
    main()
