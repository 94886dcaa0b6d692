"""A saved label's segments, as the GUIs send them, turned into the vocabulary's values before it is stored.

3D Slicer's Submit Label exports segment i of its list as value i + 1 and says so in ``params.label_info``
(``[{"name": "MS lesion", "idx": 1}, ...]``): the values in the file are positions, not meanings. The names are what
the radiologist chose, so they decide what each voxel is stored as (mslesion.vocabulary).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import nibabel as nib
import numpy as np

from ..answers import write_answer
from ..studies import StudyError, catalogue_of
from ..vocabulary import NEW_LESIONS_MARKED, SegmentProblem, remap_by_label_info


def image_kind(store, image_id: str) -> str | None:
    """The sequence of a datastore image (BIDS name or, for DICOMweb, its SeriesDescription), if known."""
    ref = catalogue_of(store).ref(image_id)
    return ref.suffix if ref is not None else None


def _flag(value) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


@contextmanager
def label_in_vocabulary(path: str, kind: str | None, info: dict) -> Iterator[str]:
    """The label file to store: ``path`` itself, or a renumbered copy when ``info`` carries Slicer's ``label_info``.

    With label_info, ``info`` gets the values the stored label holds (``values``), so that training can tell a
    follow-up whose new lesions were marked without reading the file; ``new_lesions_marked`` is stored as a flag."""
    if NEW_LESIONS_MARKED in info:
        info[NEW_LESIONS_MARKED] = _flag(info[NEW_LESIONS_MARKED])
    label_info = info.get("label_info")
    if not path.endswith((".nii", ".nii.gz")) or kind is None or not (isinstance(label_info, list) and label_info):
        yield path  # nothing to map (plain REST saves): not read here, the datastore's check reads it once
        return
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception:  # unreadable: the datastore's own check answers it with the reason
        yield path
        return
    whole = data.dtype.kind in "iu" or bool(np.array_equal(data, np.round(data)))
    if not whole:  # fractional values: the datastore's check refuses them with the values it found
        yield path
        return
    try:
        remapped = remap_by_label_info(data, label_info, kind)
    except SegmentProblem as problem:
        raise StudyError(422, str(problem)) from problem
    info["values"] = sorted(int(v) for v in np.unique(remapped))
    if remapped is data:
        yield path
        return
    out = write_answer(remapped, image.affine, os.path.dirname(path))
    try:
        yield out
    finally:
        if os.path.exists(out):
            os.unlink(out)
