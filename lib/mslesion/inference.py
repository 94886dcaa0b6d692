"""Running a lesion U-Net over a whole preprocessed study: sliding window, AMP on a GPU, argmax."""

from __future__ import annotations

import contextlib

import torch
from monai.inferers import SlidingWindowInferer

from .recipes import Recipe


def sliding_window(recipe: Recipe) -> SlidingWindowInferer:
    return SlidingWindowInferer(
        roi_size=recipe.infer_roi, sw_batch_size=recipe.sw_batch_size, overlap=recipe.sw_overlap, mode="gaussian"
    )


def autocast(device: torch.device | str):
    """bf16 autocast on a GPU, nothing on the CPU (where fp32 is both faster and exact)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class AmpSlidingWindowInferer(SlidingWindowInferer):
    """MONAI's sliding window, run under autocast when the input lives on a GPU; returns fp32 logits."""

    def __call__(self, inputs, network, *args, **kwargs):
        with autocast(inputs.device):
            return super().__call__(inputs, network, *args, **kwargs).float()


def amp_sliding_window(recipe: Recipe) -> AmpSlidingWindowInferer:
    return AmpSlidingWindowInferer(
        roi_size=recipe.infer_roi, sw_batch_size=recipe.sw_batch_size, overlap=recipe.sw_overlap, mode="gaussian"
    )


@torch.no_grad()
def predict_logits(network: torch.nn.Module, image: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """Logits (2, ...) of one preprocessed study (C, ...), on the study's device."""
    network.eval()
    return amp_sliding_window(recipe)(image[None], network)[0]


def argmax_label(logits: torch.Tensor) -> torch.Tensor:
    """Class index per voxel, keeping the channel axis; ``max(...).indices`` is ~20x faster than argmax on a CPU."""
    return torch.max(logits, dim=0, keepdim=True).indices.to(torch.uint8)
