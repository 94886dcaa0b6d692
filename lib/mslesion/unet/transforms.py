"""Shared MONAI transform chains of the U-Net tasks: the same preprocessing for training, validation and
inference, so a model sees at serving time exactly what it saw in training."""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    ConcatItemsd,
    CropForegroundd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    FgBgToIndicesd,
    MapTransform,
    Orientationd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
    Spacingd,
    Transform,
)

from ..foreground import head_foreground
from ..studies import BASELINE
from ..studycache import load_images
from ..threads import small_op_threads, torch_threads
from .longitudinal import SubtractRegisteredBaselined
from .recipes import Recipe

IMAGE, LABEL = "image", "label"


def channel_keys(recipe: Recipe) -> list[str]:
    """Data keys of the input channels: ``image`` holds the primary sequence, companions keep their suffix."""
    return [IMAGE, *recipe.inputs[1:]]


class CompanionPathsd(MapTransform):
    """Puts the path of each companion sequence under its own key, from the request's ``sequences``."""

    def __init__(self, companions: Sequence[str], sequences_key: str = "sequences"):
        super().__init__(keys=list(companions), allow_missing_keys=True)
        self.sequences_key = sequences_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        sequences = d.get(self.sequences_key) or {}
        for key in self.keys:
            if key not in d:
                if key not in sequences:
                    raise KeyError(f"companion sequence {key} is missing from the request")
                d[key] = sequences[key]
        return d


class ForegroundZScored(MapTransform):
    """Z-score each channel over the head foreground (mean/SD normalisation of the paper), background kept."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            mask = head_foreground(image[:1])[0]
            if isinstance(image, torch.Tensor):  # one pass for mean and SD, written in place: ~1/3 faster
                out = torch.empty_like(image)
                for c in range(image.shape[0]):
                    std, mean = torch.std_mean(image[c][mask])
                    torch.sub(image[c], mean, out=out[c]).div_(std if std > 0 else 1.0)
            else:
                out = image.copy()
                for c in range(image.shape[0]):
                    values = image[c][mask]
                    mean, std = values.mean(), values.std()
                    out[c] = (image[c] - mean) / (std if std > 0 else 1.0)
            d[key] = out
        return d


class LesionMaskd(MapTransform):
    """Turns a saved label into this task's binary target: 1 where the label holds one of ``values``."""

    def __init__(self, keys: KeysCollection, values: Sequence[int]):
        super().__init__(keys)
        self.values = tuple(values)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            mask = torch.zeros_like(label, dtype=torch.bool) if isinstance(label, torch.Tensor) else None
            for value in self.values:
                hit = label.round() == value
                mask = hit if mask is None else (mask | hit)
            d[key] = mask.to(torch.float32) if isinstance(mask, torch.Tensor) else mask.astype(np.float32)
        return d


class WithSmallOpThreadsd(Transform):
    """Runs a transform of many small tensor ops (registration) with few torch threads when its data is on the CPU
    (see mslesion.threads); on a GPU it runs as is."""

    def __init__(self, transform: Transform, key: str = IMAGE):
        self.transform, self.key = transform, key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        image = data.get(self.key)
        on_cpu = isinstance(image, torch.Tensor) and image.device.type == "cpu"
        with torch_threads(small_op_threads()) if on_cpu else contextlib.nullcontext():
            return self.transform(data)


def preprocess(recipe: Recipe, with_label: bool = False, device: str | torch.device = "cpu") -> list:
    """Load, stack channels, move to the device, RAS, 1 mm, crop to the head, z-score (and binarise the label).

    Inference chains (no label) read images through the server's bounded cache of decoded studies, so a second
    task or the uncertainty scoring on the same study does not decode it again; training caches its own
    preprocessed studies (CacheDataset) and reads files directly. Everything after loading runs on ``device``.

    A longitudinal recipe also loads the baseline the same way and replaces the image by follow-up minus the
    registered baseline (or, ``with_followup``, adds that subtraction as a second channel); at inference the
    registration's report is kept under ``registration``.
    """
    channels = channel_keys(recipe)
    baseline = [BASELINE] if recipe.longitudinal else []
    keys = channels + baseline + ([LABEL] if with_label else [])
    companions = [*recipe.inputs[1:], *baseline]
    chain: list = [CompanionPathsd(companions)] if companions else []
    chain += [load_images(keys, cached=not with_label), EnsureChannelFirstd(keys=keys)]
    if len(channels) > 1:
        chain += [ConcatItemsd(keys=channels, name=IMAGE), DeleteItemsd(keys=channels[1:])]
    spatial = [IMAGE] + ([LABEL] if with_label else [])
    modes = ["bilinear"] + (["nearest"] if with_label else [])
    chain += [
        EnsureTyped(keys=spatial + baseline, device=device, track_meta=True),
        Orientationd(keys=spatial + baseline, axcodes="RAS"),
        Spacingd(keys=spatial + baseline, pixdim=recipe.spacing, mode=modes + ["bilinear"] * len(baseline)),
        CropForegroundd(keys=spatial, source_key=IMAGE, select_fn=head_foreground, margin=4, allow_smaller=True),
    ]
    if baseline:
        chain.append(
            CropForegroundd(keys=BASELINE, source_key=BASELINE, select_fn=head_foreground, margin=8, allow_smaller=True)
        )
    chain.append(ForegroundZScored(keys=[IMAGE, *baseline]))
    if baseline:
        subtract = SubtractRegisteredBaselined(IMAGE, BASELINE, report_key=None if with_label else "registration",
                                               keep_followup=recipe.with_followup)
        chain.append(WithSmallOpThreadsd(subtract))
    if with_label:
        chain.append(LesionMaskd(keys=LABEL, values=recipe.positive_values))
    return chain


class LesionBalancedIndicesd(MapTransform):
    """Lesion-centre candidates that weigh every lesion alike: ``per_lesion`` voxels drawn from each connected
    lesion (with replacement). A crop centred on a voxel picked uniformly from them picks a lesion uniformly, then a
    voxel of it; picked per voxel instead, a 2 mL lesion would be drawn 100 times more often than a 0.02 mL one,
    and small lesions, the ones a model misses, would hardly be trained on."""

    def __init__(self, keys: KeysCollection = f"{LABEL}_fg_indices", label_key: str = LABEL, per_lesion: int = 64,
                 seed: int = 0):
        super().__init__(keys)
        self.label_key, self.per_lesion = label_key, per_lesion
        self.rng = np.random.default_rng(seed)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        from ..metrics import lesion_components

        d = dict(data)
        label = np.asarray(d[self.label_key][0].cpu() if isinstance(d[self.label_key], torch.Tensor)
                           else d[self.label_key][0])
        components, count = lesion_components(label > 0)
        if not count:
            return d
        flat = components.ravel()
        order = np.argsort(flat, kind="stable")
        starts = np.searchsorted(flat[order], np.arange(1, count + 2))
        picks = [order[starts[i] + self.rng.integers(0, starts[i + 1] - starts[i], self.per_lesion)]
                 for i in range(count) if starts[i + 1] > starts[i]]
        for key in self.key_iterator(d):
            d[key] = np.concatenate(picks).astype(np.int64)
        return d


class ThinnedIndicesd(MapTransform):
    """Keeps ``keep`` voxels drawn at random from an index list. Lesion-free crop centres need variety, not every
    voxel: all background indices as int64 cost ~35 MB per cached study (15 GB for the 76 two-channel enhancement
    studies, which got the run killed); 50,000 cost 0.4 MB and still cover the head at ~4 mm."""

    def __init__(self, keys: KeysCollection = f"{LABEL}_bg_indices", keep: int = 50_000, seed: int = 0):
        super().__init__(keys)
        self.keep = keep
        self.rng = np.random.default_rng(seed)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            indices = np.asarray(d[key])
            if len(indices) > self.keep:
                d[key] = np.sort(self.rng.choice(indices, self.keep, replace=False))
        return d


class BrightTissueIndicesd(MapTransform):
    """Adds hard-negative crop centres to the lesion-free ones: voxels of the brightest ``1 - quantile`` of the head
    tissue (first channel) that are not lesion, enough of them that ``share`` of the lesion-free crops are centred
    there. What a lesion model mistakes for lesion is bright: cortex, deep grey nuclei, a bias-bright region. The
    other lesion-free centres are drawn anywhere in the cropped head, in a whole-head study mostly outside the brain
    (their median z-score on the new-site benchmark's studies is -2.5)."""

    def __init__(self, share: float, quantile: float = 0.9, keys: KeysCollection = f"{LABEL}_bg_indices",
                 seed: int = 0):
        super().__init__(keys)
        if not 0.0 <= share < 1.0:
            raise ValueError(f"bright_negative_share must be in [0, 1), not {share}")
        self.share, self.quantile = share, quantile
        self.rng = np.random.default_rng(seed)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image, label = (np.asarray(d[k][0].cpu() if isinstance(d[k], torch.Tensor) else d[k][0])
                        for k in (IMAGE, LABEL))
        low, high = np.quantile(image, [0.0, 0.99])
        tissue = image > low + 0.1 * (high - low)  # the head, not the air around it
        if not tissue.any():
            return d
        bright = np.flatnonzero((image >= np.quantile(image[tissue], self.quantile)) & tissue & (label == 0))
        for key in self.key_iterator(d):
            anywhere = np.asarray(d[key])
            wanted = int(round(len(anywhere) * self.share / (1.0 - self.share)))
            if len(bright) and wanted:
                picks = self.rng.choice(bright, wanted, replace=wanted > len(bright))
                d[key] = np.concatenate([anywhere, picks]).astype(np.int64)
        return d


def lesion_indices(recipe: Recipe | None = None) -> list:
    """Where the lesions (balanced per lesion) and lesion-free voxels (a thinned sample, plus bright tissue if the
    recipe asks for hard negatives) are, computed once per cached study, not at every patch draw."""
    chain = [FgBgToIndicesd(keys=LABEL), LesionBalancedIndicesd(), ThinnedIndicesd()]
    if recipe is not None and recipe.bright_negative_share > 0:
        chain.append(BrightTissueIndicesd(recipe.bright_negative_share))
    return chain


def intensity_augmentation(recipe: Recipe) -> list:
    """At least as wide as nnU-Net's: contrast scale 0.75-1.25, shift, gamma 0.7-1.5, noise, blur and simulated low
    resolution, because grey matter alone moves by a quarter of an SD between subjects and scanners."""
    return [
        RandScaleIntensityd(keys=IMAGE, factors=0.25, prob=0.5),
        RandShiftIntensityd(keys=IMAGE, offsets=0.2, prob=0.5),
        RandAdjustContrastd(keys=IMAGE, gamma=(0.7, 1.5), prob=0.3),
        RandGaussianNoised(keys=IMAGE, std=0.1, prob=0.2),
        RandGaussianSmoothd(keys=IMAGE, sigma_x=(0.5, 1.2), sigma_y=(0.5, 1.2), sigma_z=(0.5, 1.2), prob=0.2),
        RandSimulateLowResolutiond(keys=IMAGE, zoom_range=(0.5, 1.0), prob=0.2),
    ]


def training_augmentation(recipe: Recipe, num_samples: int | None = None) -> list:
    """Patch sampling (half on lesions, lesion by lesion; half off), the paper's augmentations (elastic, affine,
    flips) and wide intensity augmentation."""
    keys = [IMAGE, LABEL]
    return [
        RandCropByPosNegLabeld(
            keys=keys,
            label_key=LABEL,
            spatial_size=recipe.patch,
            pos=1,
            neg=1,
            num_samples=num_samples or recipe.patches_per_study,
            fg_indices_key=f"{LABEL}_fg_indices",
            bg_indices_key=f"{LABEL}_bg_indices",
            allow_smaller=True,
        ),
        Rand3DElasticd(
            keys=keys,
            sigma_range=(5, 8),
            magnitude_range=(50, 150),
            prob=recipe.elastic_prob,
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        RandAffined(
            keys=keys,
            prob=0.5,
            rotate_range=(0.2, 0.2, 0.2),
            scale_range=(0.1, 0.1, 0.1),
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        RandFlipd(keys=keys, spatial_axis=0, prob=0.5),
        *intensity_augmentation(recipe),
    ]
