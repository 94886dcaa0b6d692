"""enhancement_prediction's calibrated answers: temperature scaling fitted on validation, clipping away from 0 and 1,
weights without calibration, and what drove an answer (top slices, lesions). Tiny inputs, no training."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mslesion import weights
from mslesion.enhancement_prediction import calibration
from mslesion.enhancement_prediction.explain import driving_lesions, top_slices
from mslesion.enhancement_prediction.networks import PROBABILITY_CEILING, PROBABILITY_FLOOR, EnhancementPredictor
from mslesion.enhancement_prediction.pretrain import weights_metadata
from mslesion.enhancement_prediction.recipe import ENHANCEMENT_PREDICTION
from mslesion.enhancement_prediction.training import calibrate, participant_probability

SMALL = replace(ENHANCEMENT_PREDICTION, n_slices=6, slice_size=32, fov_mm=64.0)


def test_temperature_scaling_recovers_an_overconfident_logit():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 4000)
    truth = rng.random(4000) < 1 / (1 + np.exp(-true_logit))
    t = calibration.fit_temperature(truth, 3.0 * true_logit)  # overconfident by a factor 3
    assert t == pytest.approx(3.0, rel=0.1)
    assert calibration.log_loss(truth, 3 * true_logit, t) < calibration.log_loss(truth, 3 * true_logit)
    assert calibration.fit_temperature(np.ones(20), rng.normal(size=20)) == 1.0  # one class: no fit
    assert calibration.fit_temperature(truth[:5], true_logit[:5]) == 1.0  # too few studies
    separable = calibration.fit_temperature(np.r_[np.zeros(10), np.ones(10)], np.r_[-np.ones(10), np.ones(10)])
    assert calibration.T_MIN <= separable <= calibration.T_MAX


def test_answers_are_never_exactly_zero_or_one():
    model = EnhancementPredictor(SMALL).eval()
    with torch.no_grad():
        model.participant.net[-1].bias.fill_(1e4)
        high = model.probability(torch.rand(3, SMALL.n_slices))
        model.participant.net[-1].bias.fill_(-1e4)
        low = model.probability(torch.rand(3, SMALL.n_slices))
    assert torch.all(high == PROBABILITY_CEILING) and torch.all(low == PROBABILITY_FLOOR)
    assert 0 < PROBABILITY_FLOOR and PROBABILITY_CEILING < 1
    assert np.all(calibration.calibrated(np.array([-1e9, 0.0, 1e9]), 2.0) == [PROBABILITY_FLOOR, 0.5,
                                                                                PROBABILITY_CEILING])


def test_weights_without_calibration_load_with_temperature_one(tmp_path):
    model = EnhancementPredictor(SMALL)
    state = {k: v for k, v in model.state_dict().items() if k != "temperature"}  # as the first shipped defaults
    fresh = EnhancementPredictor(SMALL)
    fresh.temperature.fill_(3.0)
    fresh.load_state_dict(state, strict=True)
    assert float(fresh.temperature) == 1.0
    # the shipped defaults (2026-12-06) are calibrated: they load strictly with the temperature their card records
    shipped = weights.default_weights("enhancement_prediction")
    served = EnhancementPredictor(ENHANCEMENT_PREDICTION)
    served.load_state_dict(weights.load_state(shipped), strict=True)
    card = json.loads(shipped.with_suffix(".json").read_text())
    assert float(served.temperature) == card["temperature"] != 1.0


def test_calibration_is_fitted_on_validation_and_stored_next_to_the_thresholds(tmp_path):
    torch.manual_seed(0)
    model = EnhancementPredictor(SMALL).eval()
    rng = np.random.default_rng(1)
    truth = (rng.random(40) < 0.5).astype(int)
    scores = np.clip(rng.normal(0.5 + 0.3 * (truth[:, None] - 0.5), 0.1, (40, SMALL.n_slices)), 0, 1)
    with torch.no_grad():  # a participant net that is far too sure of itself
        for p in model.participant.parameters():
            p.mul_(8)
    result = calibrate(model, scores, truth, torch.device("cpu"))
    assert result["temperature"] == float(model.temperature) and result["temperature"] != 1.0
    assert result["log_loss_after"] <= result["log_loss_before"] + 1e-9
    probability = participant_probability(model, scores, torch.device("cpu"))
    assert probability.min() >= np.float32(PROBABILITY_FLOOR) and probability.max() <= np.float32(PROBABILITY_CEILING)
    path = tmp_path / "w.pt"
    weights.save_state(model.state_dict(), path, half=True, metadata=weights_metadata(SMALL, model))
    meta = weights.load_metadata(path)
    assert meta["calibration"]["temperature"] == pytest.approx(result["temperature"])
    assert set(meta["thresholds"]) == {"slice", "participant"}
    reloaded = EnhancementPredictor(SMALL)
    reloaded.load_state_dict(weights.load_state(path))
    assert float(reloaded.temperature) == pytest.approx(result["temperature"])


def test_the_answer_names_its_top_slices_and_their_lesions():
    rows = [{"index": 40 - i, "axis": 2, "index_ras_1mm": 3 * i + 1, "score": s, "predicted": s > 0.5}
            for i, s in enumerate([0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.05])]
    top = top_slices(rows, k=3)
    assert [r["score"] for r in top] == [0.9, 0.8, 0.7] and [r["index"] for r in top] == [39, 37, 35]
    lesion = np.zeros((12, 12, 21), dtype=np.uint8)
    lesion[2:4, 2:4, 3:5] = 1        # slab 1 (z 3..5): 8 voxels
    lesion[8:11, 8:11, 9:11] = 1     # slab 3 (z 9..11): 18 voxels
    lesion[5:6, 9:10, 18:20] = 1     # slab 6 only: not among the top slabs
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-10, 5, -20]
    slabs = list(range(7))
    scores = [0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.05]
    lesions = driving_lesions(lesion, affine, slabs, scores, 3, [r["index_ras_1mm"] // 3 for r in top])
    assert [r["max_slice_score"] for r in lesions] == [0.9, 0.8]
    assert lesions[0]["volume_mm3"] == 16.0 and lesions[1]["volume_mm3"] == 36.0
    assert lesions[0]["centroid_mm"] == [2 * 2.5 - 10, 2.5 + 5, 3.5 - 20]
    assert driving_lesions(np.zeros_like(lesion), affine, slabs, scores, 3, [1]) == []
