"""GPU smoke suite: each server task on CUDA answers what it answers on the CPU (within tolerance).

Run with ``make test-gpu`` (``pytest -m gpu``) on a machine with CUDA; everywhere else it is skipped. CI stays
CPU-only. The comparison itself lives in bench/gpu_smoke.py, which also prints the figures for a report.
"""

from __future__ import annotations

import pytest
import torch
from bench.gpu_smoke import CASES, MIN_DICE, compare_task, dice, write_phantom_studies

from mslesion.dev.serverproc import ServerProcess

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False); CI is CPU-only"
)


@pytest.fixture(scope="module")
def gpu_client(tmp_path_factory):
    from monailabel.client import MONAILabelClient

    root = tmp_path_factory.mktemp("gpu")
    write_phantom_studies(root / "studies", root / "truth", list(CASES), train=False)
    server = ServerProcess(root / "studies", root / "model", root / "server.log",
                           env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    yield MONAILabelClient(server.url)
    server.stop()


@pytest.mark.gpu
@pytest.mark.server
@needs_cuda
@pytest.mark.parametrize("task", list(CASES))
def test_cuda_answer_matches_cpu(gpu_client, task):
    result = compare_task(gpu_client, task, runs=1)
    assert result["cuda_device"].startswith("cuda"), result
    assert result["gpu_peak_mb"] and result["gpu_peak_mb"] > 0, result
    assert result["dice_cuda_vs_cpu"] >= MIN_DICE[task], result
    assert not result["problems"], result


def test_dice_tells_agreement_from_disagreement():
    """The comparison the suite relies on can fail (runs everywhere, GPU or not)."""
    import numpy as np

    a = np.zeros((8, 8, 8), np.uint8)
    a[2:6, 2:6, 2:6] = 1
    b = np.roll(a, 2, axis=0)
    assert dice(a, a) == 1.0 and dice(a * 0, a * 0) == 1.0
    assert dice(a, b) == pytest.approx(0.5)
