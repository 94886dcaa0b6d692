"""Data-parallel training with torch.distributed, run for real: two CPU processes joined over gloo.

NCCL on GPUs is the same code with another backend and ``cuda:<LOCAL_RANK>``; this machine has no GPU to run it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mslesion import distributed, weights
from mslesion.networks import lesion_unet
from mslesion.recipes import FLAIR_LESION, for_cpu
from mslesion.training import combine_scores, fit
from mslesion.transforms import IMAGE, LABEL

# Small enough for two ranks on two cores: 2 mm phantoms, 32^3 patches, a narrow U-Net, one epoch.
TINY = replace(for_cpu(FLAIR_LESION), spacing=(2.0, 2.0, 2.0), patch=(32, 32, 32), patches_per_study=4, epochs=1,
               batch_size=2, channels=(4, 8, 16, 32, 64), infer_roi=(64, 64, 64))


@pytest.fixture(scope="module")
def tiny_items(tmp_path_factory) -> list[dict]:
    from mslesion.phantoms import PhantomOptions, write_cohort

    folder = tmp_path_factory.mktemp("tiny") / "studies"
    paths = write_cohort(folder, cohort="ms", subjects=3, seed=5, labelled=1.0,
                         options=PhantomOptions(sequences=("FLAIR",), spacing=(2.0, 2.0, 2.0)))
    return [{IMAGE: str(p), LABEL: str(folder / "labels" / "final" / p.name), "id": p.name} for p in sorted(paths)]


def train_rank(train_items: list[dict], val_items: list[dict], model_dir: str, out_dir: str) -> dict:
    """One rank of the test: deliberately different initial weights per rank (DDP must replace them with rank 0's),
    train, record what this rank did, and publish from rank 0 only."""
    world = distributed.current()
    torch.manual_seed(1000 + world.rank)
    network = lesion_unet(TINY)
    result = fit(TINY, network, train_items, val_items, world.device, lr=1e-3, seed=3)
    out = Path(out_dir)
    torch.save(result.state, out / f"state-rank{world.rank}.pt")
    (out / f"rank{world.rank}.json").write_text(json.dumps({
        "rank": world.rank, "world_size": world.world_size, "rank_steps": result.rank_steps,
        "history": result.history, "best_epoch": result.best_epoch,
    }))
    if distributed.is_main():
        weights.publish(result.state, model_dir, TINY.task, metadata={"world_size": world.world_size})
    return {"best_epoch": result.best_epoch, "rank_steps": result.rank_steps}


@pytest.mark.slow
def test_two_gloo_ranks_train_in_step_and_only_rank_0_publishes(tiny_items, tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "ranks"
    out.mkdir()
    returned = distributed.spawn(train_rank, 2, tiny_items[:2], tiny_items[2:], str(model_dir), str(out),
                                 use_cuda=False)

    # both ranks trained, the same number of steps (each on its own study), and both know it
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1] and all(r["world_size"] == 2 for r in reports)
    steps = reports[0]["rank_steps"]
    assert len(steps) == 2 and steps[0] == steps[1] > 0 and reports[1]["rank_steps"] == steps
    assert returned == {"best_epoch": reports[0]["best_epoch"], "rank_steps": steps}  # rank 0's return value
    # every rank saw the same (gathered) validation and took the same decision
    assert reports[0]["history"] == reports[1]["history"] and reports[0]["history"][0]["studies"] == 1

    # DDP kept the weights identical although each rank started from different ones
    states = [torch.load(out / f"state-rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    initial = lesion_unet(TINY).state_dict()
    assert any(not torch.equal(states[0][k], initial[k]) for k in initial)

    # exactly one published model, and it loads into the network
    published = sorted(p.relative_to(model_dir) for p in model_dir.rglob("*") if p.is_file())
    assert published == [Path(TINY.task) / "model.pt"]
    loaded = weights.load_state(model_dir / TINY.task / "model.pt")
    lesion_unet(TINY).load_state_dict(loaded)
    assert all(torch.equal(loaded[k], states[0][k]) for k in loaded)
    assert weights.load_metadata(model_dir / TINY.task / "model.pt")["world_size"] == 2


def test_shards_are_equal_so_no_rank_waits_in_a_collective():
    items = list(range(5))
    shards = [distributed.shard(items, r, 2) for r in (0, 1)]
    assert shards == [[0, 2, 4], [1, 3, 0]]  # the short rank wraps around
    assert distributed.shard(items[:1], 1, 3) == [0]  # fewer studies than ranks: each rank still trains
    assert sorted({i for s in shards for i in s}) == items  # every study is trained on
    assert distributed.shard(items, 0, 1) == items


def test_validation_shares_combine_into_the_whole_cohort_scores():
    parts = [{"studies": 2, "detected": 3, "f1": 0.5}, {}, {"studies": 1, "detected": 1, "f1": 0.8}]
    combined = combine_scores(parts)
    assert combined["studies"] == 3 and combined["detected"] == 4
    assert combined["f1"] == pytest.approx((0.5 * 2 + 0.8) / 3)
    assert combine_scores([{"studies": 1, "f1": 0.25}]) == {"studies": 1, "f1": 0.25}
    assert combine_scores([{}, {}]) == {}


def test_requested_world_size_follows_monai_label_conventions():
    cpu = torch.device("cpu")
    assert distributed.requested_world_size({}, cpu) == 1
    assert distributed.requested_world_size({"multi_gpu": True}, cpu) == 1  # no GPUs, no explicit count
    assert distributed.requested_world_size({"multi_gpu": True, "world_size": 2}, cpu) == 2
    assert distributed.requested_world_size({"multi_gpu": "false", "world_size": 2}, cpu) == 1
