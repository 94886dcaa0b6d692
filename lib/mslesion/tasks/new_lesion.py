"""new_lesion: lesions that are new since the previous visit, on the follow-up FLAIR (label 2 = new MS lesion).

The follow-up is registered to the baseline FLAIR (the subject's previous session, or the request's
``baseline``), the baseline is pulled onto the follow-up's grid and subtracted, and the U-Net reads the follow-up
and the subtraction as two channels (older weights: the subtraction alone). By default (``include_all_lesions``)
the answer also marks flair_lesion's other lesions as 1, so that a GUI shows the existing lesions and the new ones
as two segments. Default weights: flair_lesion's, then domain-randomised MS follow-ups and glioma change
(model/new_lesion.md).
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.utils.others.generic import strtobool

from ..studies import StudyError
from ..unet.recipes import NEW_LESION
from ..vocabulary import FLAIR, NEW_LESIONS_MARKED, NEW_MS_LESION, VOCABULARY
from .segmentation import LesionSegmentationConfig, LesionSegmentationInfer, LesionSegmentationTrain

logger = logging.getLogger(__name__)

NEW_VALUE = VOCABULARY[FLAIR][NEW_MS_LESION]


class NewLesionInfer(LesionSegmentationInfer):
    """The shared U-Net inference on the subtraction input, reporting the registration it relied on."""

    all_lesions: LesionSegmentationInfer | None = None  # flair_lesion, set by the app when it serves both

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # In config() so that Slicer's and OHIF's options tables show them (and Slicer sends them with every Run).
        self._config.update({"baseline": "", "force_baseline": False, "include_all_lesions": True})

    def answered_label(self, data: dict) -> np.ndarray:
        new = super().answered_label(data)
        if not strtobool(str(data.get("include_all_lesions", True))):
            return new
        if self.all_lesions is None:  # a server without flair_lesion answers the new lesions alone
            data["include_all_lesions_note"] = (
                "include_all_lesions needs the flair_lesion model, which this server does not run (start it with "
                "flair_lesion in --conf models); only new lesions are marked."
            )
            return new
        _, other = self.all_lesions({"image": data["image_path"], "device": data.get("device"), "skip_writer": True})
        lesions = other["pred"][0].cpu().numpy()
        return np.where(new > 0, new, np.where(lesions > 0, 1, 0)).astype(np.uint8)

    def extra_results(self, data: dict) -> dict:
        extra = {"registration": data.get("registration")}
        if data.get("include_all_lesions_note"):
            extra["note"] = data["include_all_lesions_note"]
        return extra


def marked_new_lesions(datastore: Datastore, image_id: str, label_path: str) -> bool:
    """Whether a saved follow-up label says which lesions are new: it holds value 2, or its saver said
    ``new_lesions_marked`` (a follow-up without new lesions). A label saved after running only flair_lesion does
    neither, and teaching new_lesion from it would teach "nothing is new"."""
    info = {}
    try:
        info = datastore.get_label_info(image_id, DefaultLabelTag.FINAL.value) or {}
    except Exception:
        pass
    if strtobool(str(info.get(NEW_LESIONS_MARKED, False))):
        return True
    values = info.get("values")
    if isinstance(values, list):
        return NEW_VALUE in values
    try:
        return bool((np.asanyarray(nib.load(label_path).dataobj) == NEW_VALUE).any())
    except Exception:
        return False


class NewLesionTrain(LesionSegmentationTrain):
    """Trains on follow-up labels whose new lesions were marked; says which labels it skipped and why."""

    skipped: dict[str, str]

    def labelled_studies(self, datastore: Datastore) -> list[dict]:
        self.skipped = {}
        kept = []
        for item in super().labelled_studies(datastore):
            if marked_new_lesions(datastore, item["id"], item["label"]):
                kept.append(item)
            else:
                self.skipped[item["id"]] = (
                    f"holds no new MS lesion (value {NEW_VALUE}) and was not saved with "
                    f'{{"{NEW_LESIONS_MARKED}": true}}'
                )
        return kept

    def check_ready(self, datastore: Datastore) -> list[dict]:
        try:
            return super().check_ready(datastore)
        except StudyError as error:
            if not self.skipped:
                raise
            skipped = "; ".join(f"{image_id} {why}" for image_id, why in sorted(self.skipped.items()))
            raise StudyError(
                error.status,
                f"{error.message} Skipped follow-up labels: {skipped}. Mark the new lesions as segment "
                f'"{NEW_MS_LESION}", or, when a follow-up has none, save it with params {{"{NEW_LESIONS_MARKED}": '
                "true}.",
            ) from error

    def _write_stats(self, stats: dict) -> None:
        skipped = getattr(self, "skipped", None)
        super()._write_stats({**stats, "skipped_labels": skipped} if skipped else stats)


class NewLesion(LesionSegmentationConfig):
    recipe = NEW_LESION
    description = (
        "New lesions since the previous visit on a follow-up FLAIR: segment 'new MS lesion' (2), and by default the "
        "other lesions as 'MS lesion' (1). Options: baseline (image id, default the previous session), "
        "force_baseline (a baseline of another subject id), include_all_lesions"
    )

    def infer(self):
        return NewLesionInfer(self.recipe, self.path, self.network, self.description)

    def trainer(self):
        return NewLesionTrain(self.recipe, self.model_dir, self.default_weights, self.description)

