"""Data-parallel training with torch.distributed, run for real: two CPU processes joined over gloo.

NCCL on GPUs is the same code with another backend and ``cuda:<LOCAL_RANK>``; this machine has no GPU to run it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import torch

from mslesion import distributed, weights
from mslesion.server.datastore import ValidatingDatastore
from mslesion.studies import StudyError
from mslesion.tasks.segmentation import LesionSegmentationTrain
from mslesion.unet.networks import lesion_unet
from mslesion.unet.recipes import FLAIR_LESION, for_cpu
from mslesion.unet.training import combine_scores, state_digest

# Small enough for two ranks on two cores: 2 mm phantoms, 32^3 patches, a narrow U-Net, one epoch.
TINY = replace(for_cpu(FLAIR_LESION), spacing=(2.0, 2.0, 2.0), patch=(32, 32, 32), patches_per_study=4, epochs=1,
               batch_size=2, channels=(4, 8, 16, 32, 64), infer_roi=(64, 64, 64))


@pytest.fixture(scope="module")
def tiny_datastore(tmp_path_factory) -> Path:
    """Three labelled 2 mm FLAIR phantoms in a datastore folder."""
    from mslesion.phantoms import PhantomOptions, write_cohort

    studies = tmp_path_factory.mktemp("tiny") / "studies"
    write_cohort(studies, cohort="ms", subjects=3, seed=5, labelled=1.0,
                 options=PhantomOptions(sequences=("FLAIR",), spacing=(2.0, 2.0, 2.0)))
    return studies


@pytest.mark.slow
def test_a_multi_gpu_request_trains_two_gloo_ranks_in_step_and_rank_0_alone_publishes(tiny_datastore, tmp_path,
                                                                                       capfd):
    """The server's trainer as MONAI Label runs it for POST /train/flair_lesion {"multi_gpu": true, ...}, with
    an explicit world_size because this machine has no GPU: two processes, gloo, a real datastore."""
    model_dir = tmp_path / "model"
    trainer = LesionSegmentationTrain(TINY, str(model_dir), model_dir / "no-defaults.pt", "flair lesions")
    store = ValidatingDatastore(str(tiny_datastore), extensions=["*.nii.gz"])
    request = {"multi_gpu": True, "world_size": 2, "device": "cpu", "pretrained": False, "schedule": "paper",
               "val_fraction": 0.3}
    stats = trainer(request, store)  # what rank 0 returned
    logs = capfd.readouterr().err

    assert stats["status"] == "PUBLISHED" and stats["world_size"] == 2
    assert stats["train_studies"] == ["sub-01_ses-01_FLAIR", "sub-02_ses-01_FLAIR"]  # one for each rank
    # both ranks trained, the same number of steps (no rank left waiting in a collective), and said so
    steps = stats["rank_steps"]
    assert len(steps) == 2 and steps[0] == steps[1] > 0
    for rank in (0, 1):
        assert f"rank {rank}/2 trained {steps[rank]} steps" in logs, logs[-3000:]
    # rank 0 wrote the stats file that /info/ shows; rank 1 did not overwrite it
    assert trainer.stats() == json.loads(json.dumps(stats))

    # DDP kept the two replicas bit-identical, and what was published is those weights
    digests = stats["rank_weights_sha256"]
    published = model_dir / TINY.task / "model.pt"
    loaded = weights.load_state(published)
    assert digests[0] == digests[1] == state_digest(loaded)
    initial = lesion_unet(TINY).state_dict()
    assert any(not torch.equal(loaded[k], initial[k]) for k in initial), "training did not change the weights"
    lesion_unet(TINY).load_state_dict(loaded)

    # exactly one published model file (rank 1 published nothing)
    files = sorted(p.relative_to(model_dir) for p in model_dir.rglob("*") if p.is_file())
    assert files == [Path(TINY.task) / "model.pt", Path(TINY.task) / "train_stats.json"]


def test_a_world_size_beyond_the_visible_gpus_is_refused_with_a_422():
    trainer = LesionSegmentationTrain(TINY, "/nonexistent", Path("/nonexistent.pt"), "flair lesions")
    if not torch.cuda.is_available():
        assert trainer.check_request({"multi_gpu": True, "world_size": 3, "device": "cpu"}) == 3
        assert trainer.check_request({"multi_gpu": True, "device": "cuda"}) == 1  # no GPU: one process
        return
    too_many = torch.cuda.device_count() + 1
    with pytest.raises(StudyError) as refused:
        trainer.check_request({"multi_gpu": True, "world_size": too_many, "device": "cuda"})
    assert refused.value.status_code == 422 and "world_size" in refused.value.detail


def test_shards_are_equal_so_no_rank_waits_in_a_collective():
    items = list(range(5))
    shards = [distributed.shard(items, r, 2) for r in (0, 1)]
    assert shards == [[0, 2, 4], [1, 3, 0]]  # the short rank wraps around
    assert distributed.shard(items[:1], 1, 3) == [0]  # fewer studies than ranks: each rank still trains
    assert sorted({i for s in shards for i in s}) == items  # every study is trained on
    assert distributed.shard(items, 0, 1) == items


def test_validation_shares_combine_into_the_whole_cohort_scores():
    """Ranks score their shares as lesion counts; the cohort's rates come from the summed counts (pooled), so two
    ranks give exactly what one process scoring every study gives."""
    one = {"studies": 2, "true_lesions": 10, "predicted_lesions": 8, "detected": 6, "correct": 6, "dice_sum": 1.2}
    two = {"studies": 1, "true_lesions": 2, "predicted_lesions": 4, "detected": 2, "correct": 2, "dice_sum": 0.3}
    combined = combine_scores([one, {}, two])
    assert combined["studies"] == 3 and combined["detected"] == 8 and combined["true_lesions"] == 12
    assert combined["sensitivity"] == pytest.approx(8 / 12) and combined["ppv"] == pytest.approx(8 / 12)
    assert combined["dice"] == pytest.approx(0.5) and combined["fp_per_scan"] == pytest.approx(4 / 3)
    assert combine_scores([{}, {}]) == {}


def test_requested_world_size_follows_monai_label_conventions():
    cpu = torch.device("cpu")
    assert distributed.requested_world_size({}, cpu) == 1
    assert distributed.requested_world_size({"multi_gpu": True}, cpu) == 1  # no GPUs, no explicit count
    assert distributed.requested_world_size({"multi_gpu": True, "world_size": 2}, cpu) == 2
    assert distributed.requested_world_size({"multi_gpu": "false", "world_size": 2}, cpu) == 1


@pytest.mark.server
@pytest.mark.parametrize("params, named", [
    ({"multi_gpu": "sometimes"}, "multi_gpu"), ({"world_size": -2}, "world_size"), ({"world_size": 1.5}, "world_size"),
])
def test_malformed_distributed_params_are_answered_422_before_training(server, params, named):
    answer = requests.post(f"{server.url}/train/flair_lesion", json=params, timeout=30)
    assert answer.status_code == 422 and named in answer.json()["detail"], answer.text
