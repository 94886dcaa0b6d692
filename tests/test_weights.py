"""Publishing keeps the previous weights and never leaves a partial file where inference reads."""

import torch

from mslesion import weights


def state(value):
    return {"w": torch.full((3,), float(value)), "step": torch.tensor(value)}


def test_publish_keeps_previous_and_rollback_restores(tmp_path):
    first = weights.publish(state(1), tmp_path, "t")
    assert weights.load_state(first)["w"][0] == 1
    assert not weights.previous_weights(tmp_path, "t").exists()
    weights.publish(state(2), tmp_path, "t", metadata={"round": 2})
    assert weights.load_state(first)["w"][0] == 2
    assert weights.load_state(weights.previous_weights(tmp_path, "t"))["w"][0] == 1
    assert weights.load_metadata(first)["round"] == 2
    weights.rollback(tmp_path, "t")
    assert weights.load_state(first)["w"][0] == 1
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["model.pt", "previous.pt"]


def test_half_precision_defaults_load_as_float32(tmp_path):
    path = tmp_path / "d.pt"
    weights.save_state({"w": torch.tensor([0.1234567])}, path, half=True)
    loaded = weights.load_state(path)["w"]
    assert loaded.dtype == torch.float32 and abs(float(loaded) - 0.1234567) < 1e-3


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = weights.publish(state(1), tmp_path, "t")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    try:
        weights.publish(state(2), tmp_path, "t")
    except OSError:
        pass
    assert weights.load_state(target)["w"][0] == 1
    assert not [p for p in (tmp_path / "t").iterdir() if p.name.endswith(".tmp")]
