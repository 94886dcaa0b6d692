"""Labelled studies for training and evaluation: phantom cohorts on disk, and their slice stacks cached as .npz.

A study needs FLAIR, T1w, T2w, a lesion mask (the FLAIR label) and the post-contrast T1 label (the truth).
Stacks are small (a few hundred kB compressed), so extraction, which dominates the cost of a study, runs once
per study and recipe geometry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import atomic
from ..phantoms import PhantomOptions, write_cohort
from ..phantoms.randomise import (
    SHIFTED_ACQUISITIONS,
    random_options,
    require_test_seed,
    require_training_seed,
)
from ..studies import FLAIR, T1, T1_POST, T2, parse_image_id, session_order
from ..unet.transforms import IMAGE
from .recipe import PredictionRecipe
from .slices import ENHANCING, LESION, PREVIOUS, extract_study

logger = logging.getLogger(__name__)

PHANTOM_SEQUENCES = (FLAIR, T1, T2, T1_POST)
#: Acquisition variants of the shifted test cohort (fixed settings, randomised contrast and activity signs); the
#: seed offset is the position here.
SHIFTED_VARIANTS: dict[str, dict] = {name: SHIFTED_ACQUISITIONS[name]
                                     for name in ("1mm", "3mm_axial", "whole_head", "integer_lps")}
GEOMETRY_FIELDS = ("lesion_values", "spacing", "dilation", "slab_slices", "n_slices", "fov_mm", "slice_size",
                   "min_enhancing_voxels")


def previous_session_path(flair: str | Path) -> str | None:
    """The FLAIR of the same subject's latest earlier session beside ``flair`` (BIDS names), if there is one."""
    flair = Path(flair)
    ref = parse_image_id(flair.name)
    if ref is None:
        return None
    earlier = []
    for other in flair.parent.glob(f"sub-{ref.subject}_ses-*_{ref.suffix}.nii*"):
        found = parse_image_id(other.name)
        if found and found.subject == ref.subject and found.suffix == ref.suffix \
                and session_order(found.session) < session_order(ref.session):
            earlier.append((session_order(found.session), str(other)))
    return max(earlier)[1] if earlier else None


@dataclass(frozen=True)
class LabelledStudy:
    """One session: its id (``sub-S_ses-T``), its subject (folds keep a subject's visits together), its files."""

    study_id: str
    subject: str
    paths: dict

    @classmethod
    def from_folder(cls, study_id: str, images: Path, labels: Path) -> LabelledStudy:
        subject = study_id.split("_")[0].removeprefix("sub-")
        paths = {
            IMAGE: str(images / f"{study_id}_{FLAIR}.nii.gz"),
            T1: str(images / f"{study_id}_{T1}.nii.gz"),
            T2: str(images / f"{study_id}_{T2}.nii.gz"),
            LESION: str(labels / f"{study_id}_{FLAIR}.nii.gz"),
            ENHANCING: str(labels / f"{study_id}_{T1_POST}.nii.gz"),
        }
        paths[PREVIOUS] = previous_session_path(paths[IMAGE])  # used by recipes with previous_session only
        return cls(study_id, subject, paths)


def _claim(root: Path, kind: dict) -> None:
    """Marks a cohort folder with how its phantoms are drawn; refuses to mix kinds in one folder."""
    stamp = root / "cohort.json"
    if stamp.exists():
        found = json.loads(stamp.read_text())
        if found != kind:
            raise ValueError(f"{root} holds a cohort drawn as {found}, not {kind}: use another --cohort folder")
        return
    root.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(kind) + "\n")


def phantom_cohort(root: str | Path, subjects: int, seed: int, first_subject: int = 1,
                   randomised: bool = False, variant: str | None = None) -> list[LabelledStudy]:
    """An MS phantom cohort (2 sessions per subject, 4 sequences) under ``root``, writing the subjects it lacks.

    - default: the fixed acquisition and the fixed signature of activity (the first shipped weights' data);
    - ``randomised``: every subject draws its own acquisition (phantoms.randomise.random_options: resolution, thick
      slices along any axis, orientation, storage, whole head), contrast and activity signs (phantoms/activity.py);
      training seeds only (below TEST_SEED_FLOOR);
    - ``variant`` (one of SHIFTED_VARIANTS): the shifted test cohort, a fixed acquisition variant with randomised
      contrast and signs, seeds TEST_SEED_FLOOR and above only.

    Subjects are independent of the cohort size, so a larger cohort reuses a smaller one's files.
    """
    root = Path(root)
    images, truth = root / "studies", root / "truth"
    if variant is not None:
        require_test_seed(seed)
        options = PhantomOptions(sequences=PHANTOM_SEQUENCES, randomised=True, **SHIFTED_VARIANTS[variant])
        seed = seed + list(SHIFTED_VARIANTS).index(variant)
    elif randomised:
        require_training_seed(seed)
        options = None  # drawn per subject
    else:
        options = PhantomOptions(sequences=PHANTOM_SEQUENCES)
    _claim(root, {"randomised": bool(randomised or variant), "variant": variant, "seed": seed, "generator": 2}
           if randomised or variant else {"randomised": False})
    studies = []
    for number in range(first_subject, first_subject + subjects):
        ids = [f"sub-{number:02d}_ses-{session:02d}" for session in (1, 2)]
        if not all((truth / f"{i}_{T1_POST}.nii.gz").exists() for i in ids):
            started = time.time()
            drawn = options or random_options(np.random.default_rng([seed, number]), PHANTOM_SEQUENCES)[0]
            write_cohort(images, cohort="ms", subjects=1, sessions=2, seed=seed, labelled=1.0, truth_dir=truth,
                         options=drawn, first_subject=number)
            logger.info("phantom subject %02d written in %.0f s", number, time.time() - started)
        studies += [LabelledStudy.from_folder(i, images, truth) for i in ids]
    return studies


def geometry_key(recipe: PredictionRecipe) -> str:
    """Short hash of the recipe fields that change a slice stack (a cache folder per geometry)."""
    values = {name: getattr(recipe, name) for name in GEOMETRY_FIELDS}
    if recipe.previous_session:  # only then, so that the caches of earlier recipes keep their keys
        values["previous_session"] = True
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def stacks(studies: list[LabelledStudy], recipe: PredictionRecipe, cache_dir: str | Path | None) -> list[dict]:
    """The slice stack and truth of each study (``id``, ``subject`` added), from the cache when it has them."""
    folder = Path(cache_dir) / geometry_key(recipe) if cache_dir else None
    out = []
    for study in studies:
        cached = folder / f"{study.study_id}.npz" if folder else None
        if cached and cached.exists():
            with np.load(cached) as saved:
                arrays = {k: saved[k] for k in saved.files}
        else:
            started = time.time()
            arrays = extract_study(study.paths, recipe)
            logger.info("%s: slices extracted in %.1f s", study.study_id, time.time() - started)
            if cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                atomic.write_with(cached, lambda tmp, arrays=arrays: np.savez_compressed(tmp, **arrays),
                                  prefix=f".{cached.stem}.", suffix=".tmp.npz")
        out.append({**arrays, "id": study.study_id, "subject": study.subject})
    return out
