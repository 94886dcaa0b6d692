"""From a study's files to the fixed-size slice stack the networks see, as small MONAI dictionary transforms.

A study is loaded on the FLAIR's grid (RAS, 1 mm; T1w, T2w and labels resampled onto it), each sequence is
z-scored over the head, the T2-hyperintense lesion mask is dilated by 3 voxels, consecutive 1 mm slices are
averaged into 3 mm axial slices (the paper's acquisitions were 3 mm thick; averaging also quiets the noise that
hides a subtle signature), and the N slices holding the most dilated-mask voxels become an (N, 3, S, S) stack:
channels T1w, T2w, FLAIR, zero outside the mask, a square field of view centred on the head resized to S x S.
Fewer masked slices than N leaves zero slices.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    ResampleToMatchd,
    Spacingd,
)
from scipy import ndimage

from ..foreground import head_foreground
from ..registration import register, warp
from ..studies import T1, T2
from ..studycache import load_images
from ..unet.transforms import IMAGE, CompanionPathsd, ForegroundZScored, LesionMaskd
from .recipe import PredictionRecipe

LESION = "lesion"          # the T2-hyperintense lesion mask (a saved FLAIR label, or flair_lesion's prediction)
REGION = "region"          # the lesion mask dilated: what the slice classifier is allowed to see
ENHANCING = "enhancing"    # the post-contrast T1 label (1 = enhancing lesion): ground truth, training only
HEAD_CENTRE = "head_centre"
CHANNELS = (T1, T2, IMAGE)  # input channel order of a slice: T1w, T2w, FLAIR
PREVIOUS = "previous_flair"  # the previous session's FLAIR (recipe.previous_session only)
CHANGE = "flair_change"      # FLAIR minus the registered previous FLAIR: the optional 4th channel


def channels_of(recipe: PredictionRecipe) -> tuple[str, ...]:
    """The input channels of a slice: T1w, T2w, FLAIR, and the FLAIR change when the recipe asks for it."""
    return (*CHANNELS, CHANGE) if recipe.previous_session else CHANNELS


def ball(radius: int) -> np.ndarray:
    """Voxels within ``radius`` (Euclidean) of the centre: the structuring element of the mask dilation."""
    r = np.arange(-radius, radius + 1)
    x, y, z = np.meshgrid(r, r, r, indexing="ij")
    return (x * x + y * y + z * z) <= radius * radius


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a ball of ``radius`` voxels, computed only around the mask's bounding box."""
    mask = np.asarray(mask) > 0
    out = np.zeros_like(mask)
    if radius <= 0 or not mask.any():
        return mask.copy()
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - radius, 0)
    hi = np.minimum(idx.max(axis=0) + radius + 1, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    padded = np.pad(mask[box], radius)
    grown = ndimage.binary_dilation(padded, structure=ball(radius))
    out[box] = grown[(slice(radius, -radius),) * 3]
    return out


def enhancing_slices(label: np.ndarray, min_voxels: int) -> np.ndarray:
    """Per axial slice (last axis): does it hold an enhancing region (8-connected in-plane) of ``min_voxels``+?"""
    label = np.asarray(label) > 0
    positive = np.zeros(label.shape[-1], dtype=bool)
    for k in np.flatnonzero(label.sum(axis=(0, 1)) >= min_voxels):
        components, count = ndimage.label(label[..., k], structure=np.ones((3, 3), dtype=bool))
        positive[k] = count > 0 and np.bincount(components.ravel())[1:].max() >= min_voxels
    return positive


def slabs(volume: np.ndarray, thickness: int, reduce: str = "mean") -> np.ndarray:
    """Groups of ``thickness`` consecutive axial slices (last axis, from index 0, zero-padded at the top) reduced to
    one: mean for intensities (thick slices, as acquired in the paper), any for masks and labels."""
    volume = np.asarray(volume)
    depth = -(-volume.shape[-1] // thickness) * thickness
    padded = np.zeros((*volume.shape[:-1], depth), dtype=volume.dtype)
    padded[..., : volume.shape[-1]] = volume
    grouped = padded.reshape(*volume.shape[:-1], depth // thickness, thickness)
    return grouped.any(axis=-1) if reduce == "any" else grouped.mean(axis=-1, dtype=np.float32)


def slab_centres(indices: np.ndarray, thickness: int) -> np.ndarray:
    """The middle 1 mm slice of each chosen slab (-1 stays -1)."""
    return np.where(indices >= 0, indices * thickness + thickness // 2, -1)


def most_masked_slices(region: np.ndarray, n: int) -> np.ndarray:
    """Axial indices of the (at most) ``n`` slices with the most masked voxels, in ascending order; -1 pads."""
    counts = np.asarray(region).reshape(-1, region.shape[-1]).sum(axis=0)
    order = np.argsort(-counts, kind="stable")[:n]
    chosen = np.sort(order[counts[order] > 0])
    return np.concatenate([chosen, np.full(n - chosen.size, -1)]).astype(np.int64)


def crop_square(volume: np.ndarray, centre: tuple[float, float], side: int) -> np.ndarray:
    """A ``side`` x ``side`` in-plane window of (C, X, Y, Z) around ``centre`` (x, y), zero outside the volume."""
    out = np.zeros((volume.shape[0], side, side, volume.shape[3]), dtype=volume.dtype)
    starts = [int(round(c - side / 2)) for c in centre]
    src, dst = [slice(None)], [slice(None)]
    for start, full in zip(starts, volume.shape[1:3], strict=True):
        lo, hi = max(start, 0), min(start + side, full)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(*dst, slice(None))] = volume[(*src, slice(None))]
    return out


def slab_means(volume: np.ndarray, chosen: np.ndarray, thickness: int) -> np.ndarray:
    """(..., k) float32: the chosen slabs of ``slabs(volume, thickness)``, computed for those slabs only."""
    out = np.zeros((*volume.shape[:-1], len(chosen)), dtype=np.float32)
    for j, slab in enumerate(chosen):
        out[..., j] = volume[..., slab * thickness: (slab + 1) * thickness].sum(axis=-1, dtype=np.float32) / thickness
    return out


def slice_stack(channels: np.ndarray, region: np.ndarray, valid: np.ndarray, centre: tuple[float, float],
                recipe: PredictionRecipe) -> np.ndarray:
    """(N, 3, S, S) float32 from the k chosen slices of (3, X, Y, k) channels and their (X, Y, k) region: masked,
    cropped around the head, resized to S x S (area averaging), placed where ``valid`` (N,) is True, zero elsewhere."""
    side = int(round(recipe.fov_mm / recipe.spacing[0]))
    size = recipe.slice_size
    out = torch.zeros((len(valid), channels.shape[0], size, size), dtype=torch.float32)
    if not valid.any():
        return out.numpy()
    window = crop_square((channels * region[None]).astype(np.float32), centre, side)  # (3, side, side, k)
    window = torch.from_numpy(np.ascontiguousarray(np.moveaxis(window, 3, 0)))     # (k, 3, side, side)
    out[torch.from_numpy(valid)] = torch.nn.functional.interpolate(window, size=(size, size), mode="area")
    return out.numpy()


class HeadCentred(MapTransform):
    """Records the in-plane (x, y) centre of the head's bounding box, before z-scoring moves the background."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = np.asarray(head_foreground(d[key][:1]))[0]
            if not mask.any():
                d[HEAD_CENTRE] = tuple((s - 1) / 2 for s in mask.shape[:2])
                continue
            xs, ys = np.flatnonzero(mask.any(axis=(1, 2))), np.flatnonzero(mask.any(axis=(0, 2)))
            d[HEAD_CENTRE] = ((xs[0] + xs[-1]) / 2, (ys[0] + ys[-1]) / 2)
        return d


class DilateMaskd(MapTransform):
    """The lesion mask dilated by ``radius`` voxels (a ball), written under ``output_key``."""

    def __init__(self, keys, radius: int, output_key: str = REGION):
        super().__init__(keys)
        self.radius, self.output_key = radius, output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = np.asarray(d[key])[0] > 0
            d[self.output_key] = dilate(mask, self.radius)
        return d


class SliceStackd(MapTransform):
    """The fixed-size slice stack of a study (and, with the post-contrast label, its slice and study truth)."""

    def __init__(self, recipe: PredictionRecipe):
        super().__init__(keys=[IMAGE])
        self.recipe = recipe

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        thickness = self.recipe.slab_slices
        region = slabs(np.asarray(d[REGION], dtype=bool), thickness, reduce="any")
        chosen = most_masked_slices(region, self.recipe.n_slices)
        picked = chosen[chosen >= 0]
        channels = np.stack([slab_means(np.asarray(d[key])[0], picked, thickness)
                             for key in channels_of(self.recipe)])
        d["slices"] = slice_stack(channels, region[..., picked], chosen >= 0, d[HEAD_CENTRE], self.recipe)
        d["slab_index"] = chosen
        d["slice_index"] = slab_centres(chosen, thickness)
        d["masked_voxels"] = int(np.asarray(d[REGION]).sum())
        if ENHANCING in d:
            positive = enhancing_slices(np.asarray(d[ENHANCING])[0] > 0, self.recipe.min_enhancing_voxels)
            positive_slabs = slabs(positive[None], thickness, reduce="any")[0]
            d["slice_truth"] = np.where(chosen >= 0, positive_slabs[np.maximum(chosen, 0)], False).astype(np.uint8)
            d["study_truth"] = int(positive.any())
        return d


class FlairChanged(MapTransform):
    """``flair_change``: the (z-scored) FLAIR minus the previous session's FLAIR, read from the path under
    ``previous_flair``, put on the FLAIR's 1 mm RAS grid, z-scored over its head and registered onto the FLAIR
    (rigid + affine, as new_lesion's SubtractRegisteredBaselined); all zeros without a previous session (no path)."""

    def __init__(self, recipe: PredictionRecipe):
        super().__init__(keys=[IMAGE])
        self.load = Compose([
            LoadImaged(keys=PREVIOUS, reader="NibabelReader", dtype=np.float32), EnsureChannelFirstd(keys=PREVIOUS),
            EnsureTyped(keys=PREVIOUS, track_meta=True), Orientationd(keys=PREVIOUS, axcodes="RAS"),
            Spacingd(keys=PREVIOUS, pixdim=recipe.spacing, mode="bilinear"), ForegroundZScored(keys=[PREVIOUS]),
        ])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        image = d[IMAGE]
        previous = d.pop(PREVIOUS, None)
        if not isinstance(previous, str) or not previous:
            d[CHANGE] = torch.zeros_like(torch.as_tensor(image))
            return d
        earlier = self.load({PREVIOUS: previous})[PREVIOUS].to(image.device)
        # as new_lesion's subtraction: register the current FLAIR to the earlier one, pull the earlier one back
        result = register(earlier, image, affine=True)
        on_image = warp(earlier, image, np.linalg.inv(result.matrix))
        d[CHANGE] = MetaTensor(image.as_tensor() - on_image.as_tensor().to(image.device), affine=image.affine,
                               meta=dict(image.meta))
        return d


def load_study(recipe: PredictionRecipe, with_lesion: bool, with_truth: bool = False,
               device: str | torch.device = "cpu", cached: bool = False) -> list:
    """Load FLAIR (``image``), T1w and T2w (paths under the request's ``sequences`` if not given), and optionally the
    FLAIR label (``lesion``) and post-contrast label (``enhancing``); all on the FLAIR's RAS 1 mm grid; z-score.

    ``cached`` (the server): the three images come through the shared cache of decoded studies, so the FLAIR that
    flair_lesion's mask step (or an earlier request) decoded is not decoded again. Offline extraction of many
    studies reads them plainly instead of churning the cache."""
    images = [IMAGE, T1, T2]
    labels = ([LESION] if with_lesion else []) + ([ENHANCING] if with_truth else [])
    keys = images + labels
    loading = [load_images(images, cached)] + ([load_images(labels, cached=False)] if labels else [])
    chain: list = [
        CompanionPathsd((T1, T2)),
        *loading,
        EnsureChannelFirstd(keys=keys),
        EnsureTyped(keys=keys, device=device, track_meta=True),
        Orientationd(keys=IMAGE, axcodes="RAS"),
        Spacingd(keys=IMAGE, pixdim=recipe.spacing, mode="bilinear"),
        ResampleToMatchd(keys=[T1, T2], key_dst=IMAGE, mode="bilinear", padding_mode="zeros", dtype=np.float32),
    ]
    if labels:
        chain.append(ResampleToMatchd(keys=labels, key_dst=IMAGE, mode="nearest", padding_mode="zeros",
                                      dtype=np.float32))
    chain += [HeadCentred(keys=IMAGE), ForegroundZScored(keys=images)]
    if recipe.previous_session:
        chain.append(FlairChanged(recipe))
    if with_lesion:
        chain.append(LesionMaskd(keys=LESION, values=recipe.lesion_values))
    return chain


def to_slices(recipe: PredictionRecipe) -> list:
    """Dilate the lesion mask and cut the slice stack (after ``load_study`` and a lesion mask under ``lesion``)."""
    return [DilateMaskd(keys=LESION, radius=recipe.dilation), SliceStackd(recipe)]


def extract_study(paths: dict[str, str], recipe: PredictionRecipe) -> dict[str, np.ndarray]:
    """Slice stack and ground truth of one labelled study, from its files (keys FLAIR, T1w, T2w, lesion, enhancing)."""
    data = {IMAGE: paths[IMAGE], T1: paths[T1], T2: paths[T2], LESION: paths[LESION], ENHANCING: paths[ENHANCING]}
    if recipe.previous_session:
        data[PREVIOUS] = paths.get(PREVIOUS)
    data = Compose(load_study(recipe, with_lesion=True, with_truth=True) + to_slices(recipe))(data)
    return {
        "slices": data["slices"].astype(np.float16),
        "slice_index": data["slice_index"],
        "slab_index": data["slab_index"],
        "slice_truth": data["slice_truth"],
        "study_truth": np.int64(data["study_truth"]),
        "masked_voxels": np.int64(data["masked_voxels"]),
    }
