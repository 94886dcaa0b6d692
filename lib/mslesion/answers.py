"""The label file an infer request is answered with, in the format the client asked for (``result_extension``).

Slicer and REST clients take NIfTI; OHIF's MONAI Label panel asks for ``.nrrd`` (uint8, uncompressed) and copies
the NRRD's voxels straight into its labelmap of the series, so the voxels must be in the series' own order
(columns fastest, then rows, then slices: the order of the cached NIfTI). NRRD geometry is written in LPS
(``space: left-posterior-superior``) by SimpleITK from the same affine, so a reader that does look at it (Slicer,
ITK) places the label where the NIfTI answer is.
"""

from __future__ import annotations

import gzip
import os
import tempfile

import nibabel as nib
import numpy as np

from .studies import StudyError

ANSWER_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def answer_extension(value) -> str:
    """The requested answer format, ``.nii.gz`` when none is asked for; a 422 naming the supported ones."""
    if value in (None, ""):
        return ".nii.gz"
    ext = str(value).lower()
    ext = ext if ext.startswith(".") else f".{ext}"
    if ext not in ANSWER_EXTENSIONS:
        raise StudyError(
            422, f"params result_extension {value!r} is not a label format this server writes: use one of "
            f"{', '.join(ANSWER_EXTENSIONS)} (OHIF asks for .nrrd, Slicer and REST clients take .nii.gz).",
        )
    return ext


def _truthy(value) -> bool:
    return str(value).lower() in ("true", "1", "yes")


def write_nifti_label(label: np.ndarray, affine: np.ndarray, path: str, compress: bool, compresslevel: int) -> None:
    """A uint8 NIfTI label (qform and sform set, code 1). Fortran order, NIfTI's own, so nibabel writes the array
    in one piece instead of slice by slice; a low gzip level because writing, not size, dominated the answer's
    latency (levels 1 and 3 take the same time, ~40 KB for a whole-brain label; level 6 twice as long for ~9 KB)."""
    image = nib.Nifti1Image(np.asfortranarray(label, dtype=np.uint8), affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    data = image.to_bytes()
    with open(path, "wb") as out:
        out.write(gzip.compress(data, compresslevel=compresslevel) if compress else data)


def _write_nrrd(label: np.ndarray, affine: np.ndarray, path: str, compress: bool) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(label, dtype=np.uint8).transpose(2, 1, 0)))
    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:, 3].tolist())
    sitk.WriteImage(image, path, useCompression=compress)


def write_answer(label: np.ndarray, affine: np.ndarray, directory: str, request: dict | None = None,
                 compresslevel: int = 1) -> str:
    """uint8 label on ``affine`` (RAS, the image's own) in a temp file of ``directory``, in the request's
    ``result_extension`` (``result_compress`` applies to NRRD; ``.nii.gz`` is always compressed, ``.nii`` never)."""
    request = request or {}
    ext = answer_extension(request.get("result_extension"))
    fd, path = tempfile.mkstemp(suffix=ext, prefix="label-", dir=directory)
    os.close(fd)
    if ext == ".nrrd":
        _write_nrrd(label, affine, path, _truthy(request.get("result_compress", False)))
    else:
        write_nifti_label(label, affine, path, ext == ".nii.gz", compresslevel)
    return path


_RESULTS_DIR: str | None = None


def results_dir() -> str:
    """A directory private to this server process for answered labels.

    The REST layer deletes the answered file after sending it, and MONAILabelClient saves the answer under the
    file's *base name* in its own temp dir (/tmp by default): with the server's file directly in /tmp, a client
    on the same machine could write its copy to the very path the server was about to delete.
    """
    global _RESULTS_DIR
    if _RESULTS_DIR is None or not os.path.isdir(_RESULTS_DIR):
        _RESULTS_DIR = tempfile.mkdtemp(prefix="msapp-results-")
    return _RESULTS_DIR


def write_label(label: np.ndarray, affine: np.ndarray, request: dict | None = None) -> str:
    """The answered uint8 label in a temp file of results_dir(), in the format the request asks for
    (``result_extension``: .nii.gz by default, .nii, or .nrrd for OHIF; see write_answer)."""
    return write_answer(label, affine, results_dir(), request)
