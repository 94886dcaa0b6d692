"""The networks of the project, built from MONAI parts."""

from __future__ import annotations

import torch
from monai.networks.nets import UNet

from .recipes import Recipe, input_channels


def lesion_unet(recipe: Recipe) -> torch.nn.Module:
    """3D U-Net with 4 down- and 4 up-sampling blocks (one per stride), background/lesion softmax output."""
    return UNet(
        spatial_dims=3,
        in_channels=input_channels(recipe),
        out_channels=2,
        channels=recipe.channels,
        strides=(2,) * (len(recipe.channels) - 1),
        num_res_units=1,
        norm=recipe.norm,
        dropout=recipe.dropout,
    )
