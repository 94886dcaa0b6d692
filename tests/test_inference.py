"""Sliding-window sizing (windows laid over a study, window batch from free GPU memory) and the CPU defaults."""

from __future__ import annotations

import math
import os

import pytest
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from mslesion.unet.inference import (
    BYTES_PER_VOXEL,
    amp_sliding_window,
    sw_batch_size_for,
    window_count,
    window_roi,
)
from mslesion.unet.recipes import FLAIR_LESION

ROI = FLAIR_LESION.infer_roi
WINDOW = BYTES_PER_VOXEL * math.prod(ROI)


@pytest.mark.parametrize("shape", [(160, 192, 160), (150, 180, 150), (170, 200, 170), (197, 233, 189), (400, 192, 90)])
def test_window_count_matches_monai_sliding_window(shape):
    padded = [max(s, r) for s, r in zip(shape, ROI, strict=True)]  # MONAI pads a study smaller than the ROI
    interval = _get_scan_interval(padded, ROI, 3, (FLAIR_LESION.sw_overlap,) * 3)
    assert window_count(shape, ROI, FLAIR_LESION.sw_overlap) == len(dense_patch_slices(padded, ROI, interval))


def test_sw_batch_size_fills_half_the_free_memory():
    assert sw_batch_size_for(free_bytes=10 * WINDOW, roi=ROI, windows=8) == 5
    assert sw_batch_size_for(free_bytes=int(2.5 * WINDOW), roi=ROI, windows=8) == 1


def test_sw_batch_size_bounded_by_windows_cap_and_one():
    assert sw_batch_size_for(free_bytes=1000 * WINDOW, roi=ROI, windows=3) == 3
    assert sw_batch_size_for(free_bytes=1000 * WINDOW, roi=ROI, windows=100, cap=8) == 8
    assert sw_batch_size_for(free_bytes=0, roi=ROI, windows=8) == 1
    assert sw_batch_size_for(free_bytes=-5, roi=ROI, windows=8) == 1


def test_cpu_keeps_the_recipe_window_batch():
    inferer = amp_sliding_window(FLAIR_LESION, "cpu", (197, 233, 189))
    assert inferer.sw_batch_size == FLAIR_LESION.sw_batch_size
    assert amp_sliding_window(FLAIR_LESION).sw_batch_size == FLAIR_LESION.sw_batch_size


def test_window_roi_covers_a_slightly_larger_study_in_one_window():
    grown = window_roi((164, 192, 160), ROI)
    assert grown == (176, 192, 160)
    assert window_count((164, 192, 160), ROI, 0.25) == 2 and window_count((164, 192, 160), grown, 0.25) == 1
    assert amp_sliding_window(FLAIR_LESION, "cpu", (164, 192, 160), grow_window=True).roi_size == grown
    assert tuple(amp_sliding_window(FLAIR_LESION, "cpu", (164, 192, 160)).roi_size) == ROI  # evaluation keeps it


def test_window_roi_keeps_the_recipe_roi_for_small_or_much_larger_studies():
    assert window_roi((150, 180, 150), ROI) == ROI  # never shrinks
    assert window_roi((320, 192, 160), ROI) == ROI  # two windows are cheaper than one twice the size
    assert all(r % 16 == 0 for r in window_roi((161, 193, 170), ROI))


def test_small_op_stages_run_with_one_thread_on_the_cpu_and_restore_the_count(monkeypatch):
    from mslesion.threads import torch_threads
    from mslesion.unet.transforms import WithSmallOpThreadsd

    before = torch.get_num_threads()
    seen = []
    step = WithSmallOpThreadsd(lambda d: seen.append(torch.get_num_threads()) or d)
    monkeypatch.setenv("MSAPP_SMALL_OP_THREADS", "1")
    step({"image": torch.zeros(1, 2, 2, 2)})
    monkeypatch.setenv("MSAPP_SMALL_OP_THREADS", "0")  # 0: torch's own count
    step({"image": torch.zeros(1, 2, 2, 2)})
    assert seen == [1, before] and torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("restored even on error")
    assert torch.get_num_threads() == before


def test_cpu_thread_policy_is_set_once_and_can_be_overridden(monkeypatch):
    from mslesion import threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "_applied", False)
        monkeypatch.setenv("MSAPP_CPU_THREADS", "1")
        threads.apply_cpu_thread_policy()
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("MSAPP_CPU_THREADS", "2")
        threads.apply_cpu_thread_policy()  # already applied: a second infer task does not change it
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(threads, "_applied", False)
        monkeypatch.setenv("MSAPP_CPU_THREADS", "0")  # 0 leaves torch's own count
        threads.apply_cpu_thread_policy()
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("MSAPP_CPU_THREADS")
        assert threads.cpu_threads() == max(1, (os.cpu_count() or 2) // 2)
    finally:
        torch.set_num_threads(before)
