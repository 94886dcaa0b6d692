"""The server-side halves of the GUI rules, without a server: vocabulary mapping, option spellings, progress keys,
Next Sample leases (tests/test_gui_clients.py drives the same through the real server)."""

from __future__ import annotations

import numpy as np
import pytest

from mslesion import vocabulary
from mslesion.server import options, trainstats
from mslesion.server.leases import Leases

SLICER_INFO = [{"name": "MS lesion", "idx": 1}, {"name": "new MS lesion", "idx": 2},
               {"name": "enhancing lesion", "idx": 3}]


def test_a_post_contrast_t1s_third_segment_is_stored_as_1():
    data = np.zeros((4, 4, 4), np.uint8)
    data[0] = 3
    stored = vocabulary.remap_by_label_info(data, SLICER_INFO, vocabulary.T1_POST)
    assert set(np.unique(stored[0])) == {1} and set(np.unique(stored[1:])) == {0}


def test_segments_are_mapped_by_name_not_position():
    data = np.zeros((4, 4, 4), np.uint8)
    data[0], data[1] = 1, 2
    info = [{"name": "new MS lesion", "idx": 1}, {"name": "lesion", "idx": 2}]  # reordered, an old alias
    stored = vocabulary.remap_by_label_info(data, info, vocabulary.FLAIR)
    assert set(np.unique(stored[0])) == {2} and set(np.unique(stored[1])) == {1}


def test_a_segment_with_voxels_must_be_named_for_its_image():
    data = np.zeros((4, 4, 4), np.uint8)
    data[0] = 3
    with pytest.raises(vocabulary.SegmentProblem, match='"enhancing lesion" .*do not belong on a FLAIR'):
        vocabulary.remap_by_label_info(data, SLICER_INFO, vocabulary.FLAIR)
    with pytest.raises(vocabulary.SegmentProblem, match='"Segment_1".*"MS lesion" \\(1\\), "new MS lesion" \\(2\\)'):
        vocabulary.remap_by_label_info(data, [*SLICER_INFO[:2], {"name": "Segment_1", "idx": 3}], vocabulary.FLAIR)
    empty = np.zeros((4, 4, 4), np.uint8)  # an empty unknown segment is harmless
    assert vocabulary.remap_by_label_info(empty, [{"name": "Segment_1", "idx": 1}], vocabulary.FLAIR) is empty


def test_enhancement_predictions_segment_name_maps_to_ms_lesion():
    name = vocabulary.answer_segment_name(0.834, True)
    assert name == "MS lesion (predicted enhancing, p = 0.83)"
    assert vocabulary.canonical_name(name) == vocabulary.MS_LESION


def test_gui_spellings_of_train_options():
    defaults = {"pretrained": True, "schedule": ["auto", "paper", "cpu"], "max_epochs": 0, "lr": 1e-5,
                "patches_per_study": 0}
    sent = {"pretrained": "false", "schedule": "paper", "max_epochs": "", "lr": "2e-05", "patches_per_study": "3"}
    assert options.normalise_train(sent, defaults) == {"pretrained": False, "schedule": "paper", "lr": 2e-05,
                                                       "patches_per_study": 3}
    assert options.normalise_train({"max_epochs": 0, "patches_per_study": None}, defaults) == {}
    assert options.normalise_train({"max_epochs": "many"}, defaults) == {"max_epochs": "many"}  # refused later


def test_progress_keys_and_the_running_trainer_first():
    running = {"status": "RUNNING", "start_ts": "2026-01-01T00:00:00", "recipe": {"epochs": 4}, "epoch": 1,
               "history": [{"epoch": 1, "f1": 0.3}]}
    done = {"status": "PUBLISHED", "start_ts": "2026-01-02T00:00:00", "seconds": 12.5,
            "history": [{"epoch": 1}, {"epoch": 2}], "best_validation": {"f1": 0.5}}
    stats = trainstats.for_clients({"a": {}, "b": running, "c": done}, running="b")
    assert list(stats) == ["b", "c", "a"]
    assert (stats["b"]["epoch"], stats["b"]["total_epochs"], stats["b"]["best_metric"]) == (1, 4, 0.3)
    assert "total_time" not in stats["b"]
    assert (stats["c"]["epoch"], stats["c"]["total_time"], stats["c"]["best_metric"]) == (2, 12.5, 0.5)
    stale = trainstats.for_clients({"b": running}, running=None)["b"]
    assert stale["status"] == "STOPPED" and stale["total_time"] > 0


def test_leases_hand_out_different_images_until_all_are_held():
    leases = Leases(seconds=60)
    first = lambda pool: {"id": pool[0]}  # noqa: E731
    assert [leases.choose(["a", "b"], first)["id"] for _ in range(3)] == ["a", "b", "a"]
    assert leases.choose([], first) is None
