"""One subject end to end: seeds, anatomy warp, contrasts, pathology, head motion and every session."""

from __future__ import annotations

import functools
import zlib

import numpy as np

from .anatomy import load_anatomy
from .cohorts import cohort_sessions
from .contrasts import random_acquisition, random_contrast
from .deformation import random_session_motion, random_warp
from .geometry import make_grid
from .options import COHORTS, SEQUENCES, PhantomOptions
from .randomise import (
    follow_up_drift,
    random_head,
    random_normal_enhancement,
    randomised_acquisition,
    randomised_contrast,
    site_acquisition,
    site_contrast,
)
from .session import PhantomSession, render_session

# independent random streams, so that e.g. the sequences asked for never change the lesions
_ANATOMY, _CONTRAST, _PATHOLOGY, _MOTION, _ACQUISITION, _HEAD, _VESSELS, _DRIFT, _SIGNS = range(9)


def _subject_key(subject: str) -> int:
    """Integer key of a subject label: its number, or a stable hash for non-numeric labels."""
    return int(subject) if subject.isdigit() else zlib.crc32(subject.encode()) + 1_000_000


def _rng(seed: int, cohort: str, subject: str, *purpose: int) -> np.random.Generator:
    """A generator for one purpose of one subject of one cohort, reproducible for a seed."""
    key = (COHORTS.index(cohort), _subject_key(subject), *purpose)
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


def make_subject(cohort: str, subject: str, seed: int, sessions: int = 1,
                 options: PhantomOptions = PhantomOptions()) -> list[PhantomSession]:
    """All sessions of one synthetic subject (glioma_change always has at least two)."""
    if cohort not in COHORTS:
        raise ValueError(f"unknown cohort {cohort!r}; choose one of {COHORTS}")
    if sessions < 1:
        raise ValueError("sessions must be at least 1")
    if cohort == "glioma_change":
        sessions = max(sessions, 2)
    subject = str(subject)
    anat = load_anatomy()
    warp = random_warp(_rng(seed, cohort, subject, _ANATOMY))
    contrast_rng = _rng(seed, cohort, subject, _CONTRAST)
    contrast = randomised_contrast(contrast_rng) if options.randomised else random_contrast(contrast_rng)
    if options.site:
        contrast = site_contrast(options.site)
    head = random_head(_rng(seed, cohort, subject, _HEAD)) if options.whole_head else None
    acquisition = randomised_acquisition if options.randomised else random_acquisition
    if options.site:
        acquisition = functools.partial(site_acquisition, options.site)
    vessels = random_normal_enhancement(_rng(seed, cohort, subject, _VESSELS)) if options.randomised else None
    signs = _rng(seed, cohort, subject, _SIGNS) if options.randomised else None  # activity signs (activity.py)
    warp, pathology = cohort_sessions(cohort, _rng(seed, cohort, subject, _PATHOLOGY), anat, warp, sessions, signs)
    grid = make_grid(anat.affine, anat.shape, options)
    motion = np.eye(4)
    out = []
    for index in range(sessions):
        if index > 0:
            motion = motion @ random_session_motion(_rng(seed, cohort, subject, _MOTION, index))
        acquisitions = {seq: acquisition(_rng(seed, cohort, subject, _ACQUISITION, index, SEQUENCES.index(seq)))
                        for seq in SEQUENCES if seq in options.sequences}
        session_warp, session_contrast = warp, contrast
        if options.randomised and index > 0:  # what registration cannot undo between visits
            session_warp, session_contrast = follow_up_drift(_rng(seed, cohort, subject, _DRIFT, index), warp,
                                                             contrast)
        out.append(render_session(anat, session_warp, session_contrast, pathology[index], motion, grid, acquisitions,
                                  subject=subject, session=f"{index + 1:02d}", head=head, storage=options.storage,
                                  normal_enhancement=vessels, vessel_rng=_rng(seed, cohort, subject, _VESSELS, index)))
    return out
