"""flair_lesion: single-timepoint FLAIR lesion segmentation (label 1 = lesion).

Default weights: a "disease-invariant" FLAIR U-Net pretrained on non-MS hyperintensities (glioma-like,
leukoencephalopathy, small-vessel phantoms), fine-tuned on MS corrections as radiologists save them.
"""

from ..unet.recipes import FLAIR_LESION
from .segmentation import LesionSegmentationConfig


class FlairLesion(LesionSegmentationConfig):
    recipe = FLAIR_LESION
    description = "MS lesions on a FLAIR (label 1), with a per-lesion report"
