"""new_lesion: lesions that are new since the previous visit, on the follow-up FLAIR (label 2 = new lesion).

The follow-up is registered to the baseline FLAIR (the subject's previous session, or the request's
``baseline``), the baseline is pulled onto the follow-up's grid and subtracted, and the U-Net reads the
subtraction. With ``include_all_lesions`` the answer also marks flair_lesion's other lesions as 1.
Default weights: pretrained on longitudinal glioma-change phantoms, fine-tuned on MS corrections.
"""

from __future__ import annotations

import numpy as np
from monailabel.utils.others.generic import strtobool

from ..recipes import NEW_LESION
from ..studies import StudyError
from .segmentation import LesionSegmentationConfig, LesionSegmentationInfer


class NewLesionInfer(LesionSegmentationInfer):
    """The shared U-Net inference on the subtraction input, reporting the registration it relied on."""

    all_lesions: LesionSegmentationInfer | None = None  # flair_lesion, set by the app when it serves both

    def answered_label(self, data: dict) -> np.ndarray:
        new = super().answered_label(data)
        if not strtobool(str(data.get("include_all_lesions", False))):
            return new
        if self.all_lesions is None:
            raise StudyError(
                422, "include_all_lesions needs the flair_lesion model, which this server does not run "
                "(start it with flair_lesion in --conf models).",
            )
        _, other = self.all_lesions({"image": data["image_path"], "device": data.get("device"), "skip_writer": True})
        lesions = other["pred"][0].cpu().numpy()
        return np.where(new > 0, new, np.where(lesions > 0, 1, 0)).astype(np.uint8)

    def extra_results(self, data: dict) -> dict:
        return {"registration": data.get("registration")}


class NewLesion(LesionSegmentationConfig):
    recipe = NEW_LESION
    description = (
        "New lesions since the previous visit on a follow-up FLAIR (label 2); params: baseline (image id, default "
        "the previous session), force_baseline, include_all_lesions (also mark other lesions as 1)"
    )

    def infer(self):
        return NewLesionInfer(self.recipe, self.path, self.network, self.description)
