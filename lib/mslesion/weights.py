"""Where a task's weights live, and how new weights are published without a partial file ever being read.

Default weights ship in the repository's ``model/`` folder. Training publishes into a writable model
folder: the new file is written beside the target and renamed over it (atomic on one file system), after
the weights it replaces were kept as ``previous``, so a bad round can be rolled back.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from . import atomic

REPO_MODEL_DIR = Path(__file__).resolve().parents[2] / "model"


def default_weights(task: str) -> Path:
    return REPO_MODEL_DIR / f"{task}.pt"


def published_weights(model_dir: str | Path, task: str) -> Path:
    return Path(model_dir) / task / "model.pt"


def previous_weights(model_dir: str | Path, task: str) -> Path:
    return Path(model_dir) / task / "previous.pt"


FP16_MAX = 6.0e4


def fits_half(name: str, value: torch.Tensor) -> bool:
    """Whether a tensor can be stored in fp16 without harm: floating weights within fp16's range. Batch-norm
    running statistics stay fp32: deep layers' running variances reach 10^6, which fp16 turns into inf (a
    whole-network failure, measured on the randomised flair_lesion weights)."""
    if not value.is_floating_point() or name.endswith(("running_mean", "running_var")):
        return False
    return bool(value.numel() == 0 or value.abs().max() < FP16_MAX)


def save_state(state: dict, path: Path, half: bool = False, metadata: dict | None = None) -> None:
    """Write a checkpoint atomically: temp file in the same folder, fsync, rename."""
    weights = {k: (v.half() if half and fits_half(k, v) else v).cpu() for k, v in state.items()}
    save_atomic({"model": weights, "meta": dict(metadata or {}, saved=time.strftime("%Y-%m-%dT%H:%M:%S"))}, path)


def save_atomic(payload: dict, path: Path) -> None:
    """torch.save through a temp file in the same folder, fsync and rename (mslesion.atomic): a reader never sees
    half a file (keeping the mode of the file it replaces; a new one is 0644)."""
    atomic.save_torch(path, payload, suffix=".tmp", parents=True)


def load_state(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The weights of a checkpoint as float32 tensors (defaults are stored in fp16 to stay small)."""
    payload = torch.load(path, map_location=device, weights_only=True)
    state = payload.get("model", payload)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load_metadata(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True).get("meta", {})


STALE_AFTER_S = 60.0


def sweep_temporaries(folder: Path, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the half-written ``.model.pt.*.tmp``, ``.previous.pt.*.copy`` and ``.model.pt.swap`` files that a
    publish killed mid-write leaves behind. Publishing is serialised (one training at a time), so a temporary
    older than a minute belongs to no live writer."""
    removed = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for path in folder.iterdir():
        if path.name.startswith(".") and path.suffix in (".tmp", ".copy", ".swap"):
            try:
                if now - path.stat().st_mtime > older_than_s:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def publish(state: dict, model_dir: str | Path, task: str, metadata: dict | None = None) -> Path:
    """Make new weights the ones inference uses, keeping the weights they replace as ``previous.pt``."""
    target = published_weights(model_dir, task)
    sweep_temporaries(target.parent)
    if target.exists():
        keep = previous_weights(model_dir, task)
        atomic.copy_file(target, keep, suffix=".copy", mode=0o644)
    save_state(state, target, metadata=metadata)
    return target


def rollback(model_dir: str | Path, task: str) -> Path:
    """Put the previous weights back (the current ones become ``previous``)."""
    target, keep = published_weights(model_dir, task), previous_weights(model_dir, task)
    if not keep.exists():
        raise FileNotFoundError(f"no previous weights for {task} in {Path(model_dir) / task}")
    tmp = target.with_name(f".{target.name}.swap")
    shutil.copyfile(keep, tmp)
    if target.exists():
        os.replace(target, keep)
    os.replace(tmp, target)
    return target


def transfer_state(source: dict, target: dict) -> dict:
    """``target`` filled from another task's weights (the transfer step of the paper): tensors of the same shape
    are copied; an input layer that reads more channels than the source did gets the source's kernels on its
    first channels and zeros on the new ones, so it starts by seeing only what the source model saw."""
    out = {}
    for name, value in target.items():
        weight = source.get(name)
        if weight is not None and weight.shape == value.shape:
            out[name] = weight.clone()
        elif weight is not None and weight.dim() > 1 and weight.shape[0] == value.shape[0] \
                and weight.shape[2:] == value.shape[2:] and weight.shape[1] < value.shape[1]:
            grown = torch.zeros_like(value)
            grown[:, : weight.shape[1]] = weight
            out[name] = grown
        else:
            out[name] = value
    return out
