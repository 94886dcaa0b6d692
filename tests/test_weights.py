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


def test_written_weights_are_readable_by_other_users_and_a_rewrite_keeps_the_mode(tmp_path):
    path = tmp_path / "d.pt"
    weights.save_state(state(1), path)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600: the server may run as another user
    path.chmod(0o640)
    weights.save_state(state(2), path)
    assert path.stat().st_mode & 0o777 == 0o640 and weights.load_state(path)["w"][0] == 2


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


def test_transfer_grows_the_input_layer_and_keeps_the_rest():
    from dataclasses import replace

    from mslesion.unet.networks import lesion_unet
    from mslesion.unet.recipes import ENHANCEMENT, FLAIR_LESION

    source = lesion_unet(FLAIR_LESION).state_dict()
    target = lesion_unet(ENHANCEMENT).state_dict()
    moved = weights.transfer_state(source, target)
    grown = [k for k in target if source[k].shape != target[k].shape]
    assert grown and all(moved[k].shape == target[k].shape for k in target)
    for name in grown:  # the post-contrast channel reads like the FLAIR did; the new T1w channel starts silent
        assert torch.equal(moved[name][:, :1], source[name]) and not moved[name][:, 1:].any()
    kept = [k for k in target if k not in grown and source[k].is_floating_point()]
    assert all(torch.equal(moved[k], source[k]) for k in kept)
    # a network with one channel fewer than the source is not silently shrunk: its own values are kept
    small = lesion_unet(replace(ENHANCEMENT, inputs=ENHANCEMENT.inputs[:1])).state_dict()
    back = weights.transfer_state(target, small)
    assert all(back[k].shape == small[k].shape for k in small)


def test_publish_sweeps_what_a_killed_publish_left(tmp_path):
    """A publish killed mid-write leaves a hidden temporary; the next publish removes old ones, not fresh ones."""
    import os
    import time

    weights.publish({"w": torch.zeros(2)}, tmp_path, "t")
    folder = weights.published_weights(tmp_path, "t").parent
    stale = [folder / ".model.pt.abc123.tmp", folder / ".previous.pt.copy", folder / ".model.pt.swap"]
    fresh = folder / ".model.pt.live.tmp"
    for path in [*stale, fresh]:
        path.write_bytes(b"half a checkpoint")
    old = time.time() - 2 * weights.STALE_AFTER_S
    for path in stale:
        os.utime(path, (old, old))
    weights.publish({"w": torch.ones(2)}, tmp_path, "t")
    assert [p for p in stale if p.exists()] == []
    assert fresh.exists()  # may belong to a writer still at work
    assert torch.equal(weights.load_state(weights.published_weights(tmp_path, "t"))["w"], torch.ones(2))


def test_half_precision_keeps_batch_norm_statistics_exact(tmp_path):
    """fp16 storage halves the weights but not batch-norm running statistics: deep layers' variances reach 10^6,
    beyond fp16's range, and an inf variance silences the layer (the randomised flair_lesion weights did this)."""
    import torch

    from mslesion import weights as store

    bn = torch.nn.BatchNorm3d(4)
    bn.running_var.fill_(5.0e6)
    bn.running_mean.fill_(1.0e3)
    state = {"conv.weight": torch.full((4, 1, 3, 3, 3), 0.1), "huge.weight": torch.full((2,), 1.0e5),
             **{f"bn.{k}": v for k, v in bn.state_dict().items()}}
    path = tmp_path / "w.pt"
    store.save_state(state, path, half=True)
    raw = torch.load(path, weights_only=True)["model"]
    assert raw["conv.weight"].dtype == torch.float16  # the weights are still halved
    assert raw["bn.running_var"].dtype == torch.float32 and raw["huge.weight"].dtype == torch.float32
    loaded = store.load_state(path)
    assert torch.isfinite(loaded["bn.running_var"]).all() and torch.equal(loaded["bn.running_var"], bn.running_var)


def test_any_atomically_written_file_is_readable_by_other_users_unless_a_mode_is_asked_for(tmp_path):
    from mslesion import atomic

    atomic.write_text(tmp_path / "card.json", "{}")
    atomic.write_text(tmp_path / "secret.json", "{}", mode=0o600)
    assert (tmp_path / "card.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "secret.json").stat().st_mode & 0o777 == 0o600
