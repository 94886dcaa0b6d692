"""The longitudinal input of new_lesion: the follow-up FLAIR minus the baseline FLAIR registered onto it.

Both visits arrive z-scored on 1 mm RAS grids of their own (different crops, different head positions). The
follow-up is registered to the baseline (rigid, then affine), as the paper registers follow-up to initial, and
the inverse transform pulls the baseline onto the follow-up's grid: the follow-up itself is never resampled, so
the answered label lands on the follow-up's voxels without a second interpolation.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..registration import register, warp

UNCONVERGED = (
    "registration did not align the two visits (similarity {before:.3f} -> {after:.3f}); "
    "the subtraction, and so the new lesions, are unreliable. Check that both images are FLAIRs of the same "
    "person, or pass another baseline."
)


def unreliable(before: float, after: float) -> bool:
    """A registration to distrust: it lowered the similarity (beyond the jitter of an already aligned pair, whose
    NCC can slip from 1.0000 to 0.9999), or it ended far from the ~0.99 of two visits of one head."""
    return after < before - 0.01 or after < 0.5


class SubtractRegisteredBaselined(MapTransform):
    """``image`` (follow-up) becomes follow-up minus the registered ``baseline`` (with ``keep_followup``: two
    channels, the follow-up then the subtraction); the baseline key is dropped.

    With ``report_key`` the registration's summary (similarity before and after, the matrix, timings) is kept
    under that key for the response, with a ``warning`` when the registration made things worse.
    """

    def __init__(self, image_key: str, baseline_key: str, report_key: str | None = None, keep_followup: bool = False):
        super().__init__(keys=[image_key, baseline_key])
        self.image_key, self.baseline_key, self.report_key = image_key, baseline_key, report_key
        self.keep_followup = keep_followup

    def __call__(self, data: Mapping[Hashable, MetaTensor]) -> dict:
        d = dict(data)
        followup, baseline = d[self.image_key], d.pop(self.baseline_key)
        # rigid + affine only: registration's optional deformable field lives on the fixed (baseline) grid and
        # has no closed-form inverse to pull the baseline onto the follow-up with
        result = register(baseline, followup, affine=True)
        baseline_on_followup = warp(baseline, followup, np.linalg.inv(result.matrix))
        subtraction = followup.as_tensor() - baseline_on_followup.as_tensor().to(followup.device)
        if self.keep_followup:
            subtraction = torch.cat([followup.as_tensor(), subtraction])
        d[self.image_key] = MetaTensor(subtraction, affine=followup.affine, meta=dict(followup.meta))
        if self.report_key:
            report = result.as_report()
            if unreliable(result.similarity_before, result.similarity_after):
                report["warning"] = UNCONVERGED.format(before=result.similarity_before, after=result.similarity_after)
            d[self.report_key] = report
        return d
