"""enhancement: enhancing lesions on a post-contrast T1 (label 1), with the pre-contrast T1 as second channel.

Default weights: a U-Net pretrained on enhancing-metastasis phantoms (with oedema), transferred to MS as the
paper transfers its metastasis model, then fine-tuned on the corrections radiologists save.
"""

from ..unet.recipes import ENHANCEMENT
from .segmentation import LesionSegmentationConfig


class Enhancement(LesionSegmentationConfig):
    recipe = ENHANCEMENT
    description = "Enhancing lesions on T1 post-contrast (label 1); needs the pre-contrast T1w of the same session"
