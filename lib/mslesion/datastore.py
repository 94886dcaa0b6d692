"""A MONAI Label local datastore that refuses what would corrupt it.

Stock MONAI Label 0.8.5 writes any upload into the datastore: a label of the wrong shape, a file that is not
NIfTI at all. This datastore checks every image and label before anything is written and answers a 4xx that
names the problem; on refusal nothing in the studies folder changes.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import nibabel as nib
import numpy as np
from monailabel.datastore.local import LocalDatastore

from .studies import FLAIR, T1_POST, StudyError, parse_image_id

logger = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
# Label values a saved label of each sequence may hold (DESIGN.md: 1 = lesion, 2 = new lesion on FLAIR).
LABEL_VALUES = {FLAIR: {0, 1, 2}, T1_POST: {0, 1}}
AFFINE_TOLERANCE_MM = 1e-2


def read_volume(path: str, what: str) -> nib.Nifti1Image:
    """A fully readable 3D NIfTI image, or a 422 that says why not (corrupt, truncated, not 3D, not finite)."""
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for corrupt or truncated files
        raise StudyError(
            422, f"The {what} is not a readable NIfTI file ({type(error).__name__}: {error}). Upload a .nii.gz."
        ) from error
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or min(shape) < 2:
        raise StudyError(422, f"The {what} must be a 3D volume; it has shape {tuple(image.shape)}.")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise StudyError(422, f"The {what} holds NaN or infinite voxels; export it again from the viewer.")
    return image


class ValidatingDatastore(LocalDatastore):
    """LocalDatastore whose uploads and label saves are checked before they are written."""

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        if not _SAFE_ID.match(image_id or ""):
            raise StudyError(
                422,
                f"Image id '{image_id}' is not allowed: use letters, digits, '.', '_' and '-' only, "
                "e.g. sub-01_ses-01_FLAIR.",
            )
        read_volume(image_filename, "uploaded image")
        if parse_image_id(image_id) is None:
            logger.warning("image %s has no BIDS-style name; tasks will not find its companions", image_id)
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        if image_id not in self._datastore.objects:
            raise StudyError(404, f"Image '{image_id}' is not in the datastore; a label needs its image first.")
        if not _SAFE_ID.match(label_tag or ""):
            raise StudyError(422, f"Label tag '{label_tag}' is not allowed: use letters, digits, '_' and '-'.")
        label = read_volume(label_filename, "label")
        image = nib.load(self.get_image_uri(image_id))
        image_shape, label_shape = tuple(image.shape[:3]), tuple(label.shape[:3])
        if label_shape != image_shape:
            raise StudyError(
                422,
                f"The label has shape {label_shape} but image '{image_id}' has shape {image_shape}; "
                "a label must be drawn on its image's grid (in Slicer, keep the segmentation's reference geometry).",
            )
        offset = float(np.abs(label.affine - image.affine).max())
        if offset > AFFINE_TOLERANCE_MM:
            raise StudyError(
                422,
                f"The label's affine differs from image '{image_id}' by up to {offset:.3g} mm; "
                "save the label in the image's own geometry.",
            )
        data = np.asanyarray(label.dataobj)
        values = set(np.unique(data).tolist())
        ref = parse_image_id(image_id)
        allowed = LABEL_VALUES.get(ref.suffix) if ref else None
        if allowed is not None and not values <= allowed:
            raise StudyError(
                422,
                f"The label of a {ref.suffix} image may hold only {sorted(allowed)}; "
                f"this one holds {sorted(values - allowed)[:10]}.",
            )
        return super().save_label(image_id, label_filename, label_tag, label_info)
