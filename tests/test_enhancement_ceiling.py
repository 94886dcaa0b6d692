"""The ideal reader of recorded activity signs (enhancement_prediction.ceiling) separates what the signs separate,
and no more."""

from __future__ import annotations

import numpy as np

from mslesion.enhancement_prediction.ceiling import ceiling


def _lesion(rng, active: bool, signs_show_activity: bool) -> tuple[dict, int]:
    visible = active if signs_show_activity else bool(rng.random() < 0.5)
    features = {"t2_gain": 0.3 * visible + 0.02 * rng.random(), "halo_mm": 2.0 * visible, "halo_gain": 1.0 * visible,
                "t1_iso": 0.5 * visible, "edge_mm": 0.0, "blurred_edge": 0.0, "new": float(active),
                "enlarging": 0.0, "black_hole": 0.0, "log_volume": float(np.log(0.1))}
    return features, int(active)


def _cohort(seed: int, signs_show_activity: bool, studies: int = 40) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for n in range(studies):
        enhancing = n % 2 == 0
        lesions = [_lesion(rng, False, signs_show_activity) for _ in range(5)]
        if enhancing:
            lesions.append(_lesion(rng, True, signs_show_activity))
        out.append({"study": f"s{n}", "enhancing": int(enhancing), "lesions": lesions})
    return out


def test_signs_that_mark_every_active_lesion_give_a_perfect_reader():
    report = ceiling(_cohort(1, True), _cohort(2, True))
    assert report["single_session"]["participant_auc"] == 1.0 and report["single_session"]["lesion_auc"] == 1.0


def test_signs_drawn_at_random_leave_the_single_session_reader_near_chance():
    report = ceiling(_cohort(1, False), _cohort(2, False))
    assert report["single_session"]["participant_auc"] < 0.75
    # "new" still marks the active lesion: the previous session is what separates them here
    assert report["with_previous_session"]["participant_auc"] == 1.0
