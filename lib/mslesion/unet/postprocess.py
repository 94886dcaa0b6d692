"""The U-Net's logits turned into the answered label: thresholded, small lesions dropped, back on the opened image's
grid (a paste when the grids differ only by the head crop, a nearest resample otherwise)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, SpatialResample

from ..metrics import without_small_lesions
from ..studies import StudyError
from .inference import threshold_label
from .transforms import IMAGE


def requested(data: Mapping, key: str) -> float:
    """A numeric request option; 0, "" (a GUI's empty field) or absent mean "the tuned value" (returns 0)."""
    value = data.get(key)
    try:
        return float(value) if value not in (None, "") else 0.0
    except (TypeError, ValueError):
        raise StudyError(422, f"'{key}' must be a number, got {value!r}; leave it at 0 for the tuned value") from None


class LesionLabeld(MapTransform):
    """Logits to a label holding ``value`` on predicted lesion voxels (0 elsewhere), keeping the geometry.

    A voxel is lesion where its lesion probability is above ``threshold`` (or the request's ``threshold``);
    predicted lesions smaller than ``min_voxels`` (or the request's ``min_lesion_voxels``) are dropped. Both are
    tuned on validation studies and travel with the weights: the label answered is the one the report counts and
    the one lesion-wise metrics score."""

    def __init__(self, keys, value: int, min_voxels: int = 1, threshold: float = 0.5):
        super().__init__(keys)
        self.value = value
        self.min_voxels = min_voxels
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        min_voxels = int(requested(d, "min_lesion_voxels") or self.min_voxels)
        threshold = float(requested(d, "threshold") or self.threshold)
        for key in self.key_iterator(d):
            logits = d[key]
            label = threshold_label(logits, threshold)
            if min_voxels > 1:
                kept = without_small_lesions(label[0].cpu().numpy(), min_voxels)
                label = torch.as_tensor(kept, device=label.device)[None]
            label = label * self.value
            d[key] = MetaTensor(label, affine=logits.affine) if isinstance(logits, MetaTensor) else label
        return d


def integer_offset(src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray | None:
    """Voxel offset from one grid to another when they differ only by a whole-voxel shift (a crop), else None."""
    voxel_to_voxel = np.linalg.inv(dst_affine) @ src_affine
    shift = voxel_to_voxel[:3, 3]
    if np.allclose(voxel_to_voxel[:3, :3], np.eye(3), atol=1e-4) and np.allclose(shift, np.round(shift), atol=1e-3):
        return np.round(shift).astype(int)
    return None


def paste(label: torch.Tensor, offset: np.ndarray, shape: list[int]) -> torch.Tensor:
    """A (1, ...) label placed at ``offset`` inside an empty volume of ``shape`` (parts outside are dropped)."""
    out = torch.zeros((1, *shape), dtype=label.dtype, device=label.device)
    src, dst = [slice(None)], [slice(None)]
    for start, size, full in zip(offset.tolist(), label.shape[1:], shape, strict=True):
        lo, hi = max(start, 0), min(start + size, full)
        if hi <= lo:
            return out
        src.append(slice(lo - start, hi - start))
        dst.append(slice(lo, hi))
    out[tuple(dst)] = label[tuple(src)]
    return out


class RestoreGeometryd(MapTransform):
    """Resamples a label back onto the grid of the image as it was loaded (orientation, spacing, crop undone)."""

    def __init__(self, keys, ref_key: str = IMAGE):
        super().__init__(keys)
        self.ref_key = ref_key
        self.resample = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        meta = d[self.ref_key].meta
        affine = torch.as_tensor(np.asarray(meta["original_affine"]), dtype=torch.float64)
        shape = [int(s) for s in np.asarray(meta["spatial_shape"]).tolist()]
        for key in self.key_iterator(d):
            label = d[key]
            offset = integer_offset(np.asarray(label.affine, dtype=np.float64), affine.numpy())
            if offset is not None:  # same grid up to the head crop: paste, no interpolation
                d[key] = paste(label.as_tensor() if isinstance(label, MetaTensor) else label, offset, shape)
                continue
            restored = self.resample(label.to(torch.float32), dst_affine=affine, spatial_size=shape)
            d[key] = restored.round().to(torch.uint8)
        return d
