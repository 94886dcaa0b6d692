"""Where the head is: the mask that crops, normalises and focuses registration (shared, so it has no deps)."""

from __future__ import annotations

import numpy as np
import torch


def head_foreground(image: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """The head, not the background: blocks of 4x4x4 voxels brighter on average than a tenth of the robust
    maximum. Block means silence the background noise (Rician, never zero) that would defeat a voxel test."""
    data = torch.as_tensor(image[0] if image.ndim == 4 else image, dtype=torch.float32)
    blocks = torch.nn.functional.avg_pool3d(data[None, None], 4, ceil_mode=True)[0, 0]
    mask = blocks > 0.1 * torch.quantile(blocks.reshape(-1), 0.99)
    for axis, size in enumerate(data.shape):
        mask = mask.repeat_interleave(4, dim=axis).narrow(axis, 0, size)
    mask = mask.to(data.device)
    mask = mask[None].expand(image.shape) if image.ndim == 4 else mask
    return mask if isinstance(image, torch.Tensor) else mask.cpu().numpy()
