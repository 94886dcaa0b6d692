"""Lesion-wise metrics on small hand-made volumes whose answers are known."""

import numpy as np
import pytest

from mslesion.metrics import dice, lesion_components, lesion_scores


def cube(volume, corner, size, value=1):
    x, y, z = corner
    volume[x : x + size, y : y + size, z : z + size] = value


@pytest.fixture
def truth():
    t = np.zeros((40, 40, 40), np.uint8)
    cube(t, (2, 2, 2), 4)      # lesion A, 64 voxels
    cube(t, (20, 20, 20), 3)   # lesion B, 27 voxels
    cube(t, (30, 5, 30), 2)    # lesion C, 8 voxels
    return t


def test_perfect_prediction(truth):
    s = lesion_scores(truth, truth)
    assert (s.true_lesions, s.predicted_lesions, s.detected, s.correct) == (3, 3, 3, 3)
    assert s.sensitivity == s.ppv == s.f1 == s.dice == 1.0


def test_missed_lesion_and_false_positive(truth):
    pred = np.zeros_like(truth)
    cube(pred, (3, 3, 3), 2)        # hits A partially
    cube(pred, (20, 20, 20), 3)     # B exactly
    cube(pred, (10, 30, 10), 3)     # false positive
    s = lesion_scores(truth, pred)
    assert s.detected == 2 and s.true_lesions == 3
    assert s.sensitivity == pytest.approx(2 / 3)
    assert s.correct == 2 and s.predicted_lesions == 3
    assert s.ppv == pytest.approx(2 / 3)
    assert s.f1 == pytest.approx(2 / 3)
    assert s.dice == pytest.approx(2 * (8 + 27) / (99 + 8 + 27 + 27))


def test_one_sprawling_prediction_is_not_a_perfect_detector(truth):
    pred = np.ones_like(truth)  # everything is lesion
    s = lesion_scores(truth, pred)
    assert s.sensitivity == 1.0 and s.predicted_lesions == 1 and s.correct == 0 and s.ppv == 0.0 and s.f1 == 0.0


def test_a_graze_below_the_overlap_threshold_is_not_a_detection(truth):
    pred = np.zeros_like(truth)
    pred[2, 2, 2] = pred[2, 2, 3] = pred[2, 3, 2] = 1  # 3 of lesion A's 64 voxels (< 10 %)
    s = lesion_scores(truth, pred)
    assert s.detected == 0 and s.correct == 1
    assert lesion_scores(truth, pred, min_overlap=0.01).detected == 1


def test_min_voxels_drops_small_lesions_from_both_sides(truth):
    pred = truth.copy()
    pred[35, 35, 35] = 1  # a single-voxel false positive
    assert lesion_scores(truth, pred, min_voxels=1).predicted_lesions == 4
    s = lesion_scores(truth, pred, min_voxels=9)
    assert s.true_lesions == 2 and s.predicted_lesions == 2 and s.ppv == 1.0


def test_diagonal_voxels_are_one_lesion():
    mask = np.zeros((5, 5, 5), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = 1
    assert lesion_components(mask)[1] == 1


def test_empty_cases():
    empty = np.zeros((8, 8, 8), np.uint8)
    assert lesion_scores(empty, empty).f1 == 1.0
    some = empty.copy()
    some[2:4, 2:4, 2:4] = 1
    s = lesion_scores(empty, some)
    assert s.ppv == 0.0 and s.sensitivity == 1.0
    assert lesion_scores(some, empty).sensitivity == 0.0
    assert dice(empty, empty) == 1.0


def test_shape_mismatch_is_an_error(truth):
    with pytest.raises(ValueError, match="shapes differ"):
        lesion_scores(truth, truth[:-1])


def test_small_lesions_are_dropped_and_the_rest_keep_their_values():
    from mslesion.metrics import without_small_lesions

    label = np.zeros((12, 12, 12), dtype=np.uint8)
    label[1:4, 1:4, 1:4] = 2          # 27 voxels: kept, value kept
    label[8, 8, 8:10] = 2             # 2 voxels: dropped
    label[6, 1:5, 6] = 1              # 4 voxels: dropped at min 5, kept at min 4
    kept = without_small_lesions(label, 5)
    assert kept[2, 2, 2] == 2 and kept[8, 8, 8] == 0 and kept[6, 2, 6] == 0
    assert int((kept > 0).sum()) == 27
    assert int((without_small_lesions(label, 4) > 0).sum()) == 31
    assert np.array_equal(without_small_lesions(label, 1), label)
    assert not without_small_lesions(np.zeros((4, 4, 4), np.uint8), 3).any()
