"""Randomised non-contrast signs of MS activity (phantoms/activity.py): drawn per subject and lesion, label untouched,
the default generator unchanged."""

from __future__ import annotations

import numpy as np

from mslesion.phantoms import PhantomOptions, activity, make_subject
from mslesion.phantoms.activity import NO_SIGNS, draw_signs, random_sign_profile
from mslesion.phantoms.anatomy import load_anatomy
from mslesion.phantoms.contrasts import ACTIVE_HALO_MM, active_levels
from mslesion.phantoms.deformation import random_warp
from mslesion.phantoms.ms import ms_sessions
from mslesion.phantoms.subject import _ANATOMY, _PATHOLOGY, _SIGNS, _rng

SEED = 11


def _active_signs(subject: str, signs: bool) -> list:
    anat = load_anatomy()
    warp = random_warp(_rng(SEED, "ms", subject, _ANATOMY))
    stream = _rng(SEED, "ms", subject, _SIGNS) if signs else None
    sessions = ms_sessions(_rng(SEED, "ms", subject, _PATHOLOGY), anat, warp, 2, stream)
    return [b for blobs in sessions for b in blobs if b.kind == "ms" and b.ce_label]


def test_randomised_subjects_draw_their_own_signs_of_activity():
    drawn = {}
    for number in range(1, 30):
        active = _active_signs(f"{number:02d}", signs=True)
        visible = [b.record["signs"] for b in active if b.record["signs"] != NO_SIGNS.as_record()]
        if visible:
            drawn[number] = visible
        if len(drawn) == 2:
            break
    assert len(drawn) == 2, "two subjects with visibly active lesions"
    first, second = drawn.values()
    assert first[0] != second[0]  # the strengths differ between subjects (and lesions)


def test_the_default_generator_keeps_its_fixed_signature():
    for number in range(1, 30):
        active = _active_signs(f"{number:02d}", signs=False)
        if active:
            break
    assert active and all("signs" not in b.record for b in active)
    # an active lesion's levels are active_levels() of its own: the fixed signature
    t2 = [b.levels["FLAIR"] for b in active]
    assert all(level > 1.5 for level in t2)
    assert ACTIVE_HALO_MM == 2.0


def test_signs_include_silent_active_lesions_and_inactive_mimics():
    rng = np.random.default_rng(0)
    profile = random_sign_profile(rng)
    active = [draw_signs(rng, profile, True) for _ in range(400)]
    inactive = [draw_signs(rng, profile, False) for _ in range(2000)]
    silent = sum(not s.visible for s in active) / len(active)
    mimics = sum(s.visible for s in inactive) / len(inactive)
    assert abs(silent - profile.silent) < 0.1  # the subject's share of enhancing lesions with no sign
    assert 0 < mimics < 0.3
    strengths = {round(s.t2_gain, 4) for s in active if s.t2_gain != 1.0}
    assert len(strengths) > 10  # per lesion, not one value per subject
    halo = [s for s in active if s.halo_mm > 0]
    assert halo and all(s.halo_gain > 0 for s in halo)
    levels = {"FLAIR": 1.75, "T2w": 1.9, "T1w": 0.82}
    assert NO_SIGNS.levels(levels) == levels
    assert activity.FIXED_SIGNS.levels(levels) == active_levels(levels)


def test_signs_change_the_images_never_the_labels(monkeypatch):
    options = PhantomOptions(spacing=(4.0, 4.0, 4.0), sequences=("FLAIR", "ce-gadolinium_T1w"), randomised=True)
    with_signs = make_subject("ms", "03", SEED, sessions=2, options=options)
    monkeypatch.setattr("mslesion.phantoms.ms.draw_signs", lambda rng, profile, active: NO_SIGNS)
    without = make_subject("ms", "03", SEED, sessions=2, options=options)
    for a, b in zip(with_signs, without, strict=True):
        for suffix in a.labels:
            assert np.array_equal(np.asarray(a.labels[suffix].dataobj), np.asarray(b.labels[suffix].dataobj))
    assert any(les["enhancing"] for s in with_signs for les in s.lesions)
    assert not all(np.array_equal(np.asarray(a.images["FLAIR"].dataobj), np.asarray(b.images["FLAIR"].dataobj))
                   for a, b in zip(with_signs, without, strict=True))
