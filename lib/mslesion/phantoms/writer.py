"""Writing cohorts to disk: BIDS-style flat names, MONAI Label's labels/final layout, ground truth."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib

from .. import atomic
from .options import PhantomOptions
from .subject import make_subject


def save_atomic(img: nib.Nifti1Image, path: Path) -> None:
    """Write then rename (mslesion.atomic), so a datastore watching the folder never sees half a file."""
    atomic.save_nifti(path, img, prefix=".tmp-", suffix=".nii.gz", parents=True)


def write_cohort(out_dir: str | os.PathLike, cohort: str = "ms", subjects: int = 4, sessions: int = 1,
                 seed: int = 0, labelled: float = 1.0, truth_dir: str | os.PathLike | None = None,
                 options: PhantomOptions = PhantomOptions(), first_subject: int = 1) -> list[Path]:
    """Write `subjects` synthetic subjects; labels of the first round(labelled * subjects) go to
    out_dir/labels/final, all labels and lesions.json to truth_dir. Returns the image paths."""
    if not 0.0 <= labelled <= 1.0:
        raise ValueError(f"labelled must be a fraction in [0, 1], got {labelled}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = Path(truth_dir) if truth_dir is not None else None
    n_labelled = round(labelled * subjects)
    metadata: dict[str, dict] = {}
    images: list[Path] = []
    for i in range(subjects):
        subject = f"{first_subject + i:02d}"
        for ses in make_subject(cohort, subject, seed, sessions=sessions, options=options):
            for suffix, img in ses.images.items():
                path = out / ses.filename(suffix)
                save_atomic(img, path)
                images.append(path)
            for suffix, label in ses.labels.items():
                if i < n_labelled:
                    save_atomic(label, out / "labels" / "final" / ses.filename(suffix))
                if truth is not None:
                    save_atomic(label, truth / ses.filename(suffix))
            metadata[f"sub-{ses.subject}_ses-{ses.session}"] = {
                "cohort": cohort, "subject": ses.subject, "session": ses.session, "seed": seed,
                "enhancing": any(les["enhancing"] for les in ses.lesions),
                "new_lesions": sum(bool(les["new"]) for les in ses.lesions),
                "lesions": ses.lesions,
            }
    if truth is not None:
        truth.mkdir(parents=True, exist_ok=True)
        index = truth / "lesions.json"
        merged = json.loads(index.read_text()) if index.exists() else {}
        merged.update(metadata)
        atomic.write_text(index, json.dumps(merged, indent=1, sort_keys=True))
    return images
