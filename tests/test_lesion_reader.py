"""The lesion-level reader of activity signs: what it measures on a lesion, how it calls a study, what it learns."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit

from mslesion.enhancement_prediction.lesion_reader import (
    FEATURES,
    RELATIVE,
    LesionReader,
    fit_reader,
    lesion_table,
    noisy_or_logit,
)
from mslesion.enhancement_prediction.roc import auc


def _volume(halo: bool, contrast: float, rng: np.random.Generator, shape=(40, 40, 40)):
    """A z-scored-looking volume of white matter with one ovoid lesion at the centre (and a halo if asked)."""
    grid = np.indices(shape).astype(np.float32) - np.array(shape)[:, None, None, None] / 2
    r = np.sqrt((grid[0] / 4) ** 2 + (grid[1] / 3) ** 2 + (grid[2] / 3) ** 2)
    lesion = r <= 1.0
    flair = rng.normal(0, 0.1, shape).astype(np.float32)
    flair[lesion] += contrast
    if halo:
        flair[(r > 1.0) & (r <= 1.5)] += 0.6
    t2 = flair.copy()
    t1 = -0.5 * flair
    return flair, t1, t2, lesion


def test_the_table_measures_a_halo_and_the_contrast_against_the_surrounding_tissue():
    rng = np.random.default_rng(0)
    flair, t1, t2, lesion = _volume(halo=True, contrast=2.0, rng=rng)
    enhancing = np.zeros_like(lesion)
    enhancing[20, 20, 19:22] = True
    table = lesion_table(flair, t1, t2, lesion, enhancing)
    row = dict(zip(FEATURES, table["features"][0], strict=True))
    assert table["features"].shape == (1, len(FEATURES)) and table["enhancing"].tolist() == [1]
    assert np.allclose(table["centroid"][0], [20, 20, 20], atol=0.5) and table["voxels"][0] == lesion.sum()
    assert row["flair_contrast"] > 5 and row["t1_contrast"] < -2  # bright on FLAIR, dark on T1, in spread units
    sharp = dict(zip(FEATURES, lesion_table(*_volume(halo=False, contrast=2.0, rng=rng))["features"][0],
                     strict=True))
    assert row["flair_halo"] > 3 and abs(sharp["flair_halo"]) < 1.5


def test_a_lesion_without_normal_tissue_around_it_is_left_out_and_no_lesion_gives_an_empty_table():
    empty = np.zeros((12, 12, 12), dtype=np.float32)
    full = np.ones((12, 12, 12), dtype=bool)
    assert lesion_table(empty, empty, empty, full)["features"].shape == (0, len(FEATURES))
    assert lesion_table(empty, empty, empty, ~full, ~full)["enhancing"].shape == (0,)


def test_a_study_is_called_by_its_lesions_with_a_noisy_or():
    lesion_logits = np.array([-2.0, 0.5, 1.0])
    expected = 1 - np.prod(1 - expit(lesion_logits))
    assert noisy_or_logit(lesion_logits) == pytest.approx(logit(expected))
    assert noisy_or_logit(np.array([])) < -10 and noisy_or_logit(np.array([40.0, 40.0])) > 20


def _tables(rng: np.random.Generator, studies: int) -> list[dict]:
    """Studies of 5-15 lesions; enhancing lesions have a stronger halo (the signal), the rest is noise."""
    out = []
    for _ in range(studies):
        n = int(rng.integers(5, 16))
        features = rng.normal(0, 1, (n, len(FEATURES))).astype(np.float32)
        enhancing = (rng.random(n) < (0.3 if rng.random() < 0.5 else 0.0)).astype(np.int64)
        features[:, FEATURES.index("flair_halo")] += 2.5 * enhancing
        out.append({"features": features, "enhancing": enhancing})
    return out


def test_the_fitted_reader_ranks_unseen_studies_by_the_sign_it_was_shown_and_survives_a_round_trip():
    rng = np.random.default_rng(1)
    reader = fit_reader(_tables(rng, 80), validation=_tables(rng, 20))
    test = _tables(rng, 40)
    truth = np.array([int(t["enhancing"].any()) for t in test])
    scores = np.array([reader.study_logit(t["features"]) for t in test])
    assert auc(truth, scores) > 0.9 and 0.1 <= reader.temperature <= 10
    again = LesionReader.from_dict(reader.as_dict())
    assert np.allclose(again.lesion_logits(test[0]["features"]), reader.lesion_logits(test[0]["features"]))
    stale = {**reader.as_dict(), "features": ["something_else"]}
    with pytest.raises(ValueError, match="fit it again"):
        LesionReader.from_dict(stale)


def test_the_reader_refuses_to_fit_without_both_kinds_of_lesion():
    rng = np.random.default_rng(2)
    tables = [{**t, "enhancing": np.zeros_like(t["enhancing"])} for t in _tables(rng, 5)]
    with pytest.raises(ValueError, match="enhancing and non-enhancing"):
        fit_reader(tables)


def test_a_validation_study_is_calibrated_on_its_study_truth_even_where_its_mask_missed_the_enhancing_lesion():
    rng = np.random.default_rng(3)
    training, validation = _tables(rng, 60), _tables(rng, 30)
    # the same studies read from a mask that found none of their enhancing lesions: the study truth still says
    missed = [{**t, "enhancing": np.zeros_like(t["enhancing"]), "study_truth": int(t["enhancing"].any())}
              for t in validation]
    assert sum(t["study_truth"] for t in missed) >= 5
    on_truth, on_missed = fit_reader(training, validation), fit_reader(training, missed)
    assert (on_missed.temperature, on_missed.threshold) == (on_truth.temperature, on_truth.threshold)


def test_weights_carry_one_reader_per_mask_source_and_a_predicted_mask_falls_back_to_the_drawn_one(tmp_path):
    import torch

    from mslesion import weights
    from mslesion.enhancement_prediction.lesion_reader import PREDICTED_MASK_KEY, attach, reader_in

    n = len(FEATURES) + len(RELATIVE)
    path = tmp_path / "weights.pt"
    weights.save_state({"w": torch.zeros(1)}, path, metadata={"task": "enhancement_prediction"})
    assert reader_in(weights.load_metadata(path)) is None
    attach(path, LesionReader(np.zeros(n), np.ones(n), np.zeros(n), -1.0))
    assert reader_in(weights.load_metadata(path), predicted_mask=True).intercept == -1.0  # the drawn one stands in
    attach(path, LesionReader(np.zeros(n), np.ones(n), np.zeros(n), -2.0), key=PREDICTED_MASK_KEY)
    meta = weights.load_metadata(path)
    assert reader_in(meta).intercept == -1.0 and reader_in(meta, predicted_mask=True).intercept == -2.0
    assert torch.equal(weights.load_state(path)["w"], torch.zeros(1))  # the weights themselves unchanged
