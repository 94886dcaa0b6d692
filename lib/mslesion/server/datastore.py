"""A MONAI Label local datastore that refuses what would corrupt it, and never leaves a partial file.

Stock MONAI Label 0.8.5 writes any upload into the datastore (a label of the wrong shape, a file that is not
NIfTI at all), copies labels and images in place, and rewrites its index (``datastore_v2.json``) in place: a
kill during either leaves a partial file that the next start lists as a saved label, or an index it cannot
read. This datastore

- checks every image and label before anything is written (from the NIfTI header first, so a tiny file that
  announces a volume of several GB is refused without allocating it) and answers a 4xx that names the problem;
  on refusal nothing in the studies folder changes;
- writes images, labels and the index atomically: temp file in the same folder, fsync, ``os.replace``, so after
  a crash each file is the old one or the new one; stale temp files of an interrupted save are removed at
  start-up and never count as labels (their names match no datastore extension);
- answers 404 (not 500, not a silent 200) for images, labels and tags that do not exist.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from nibabel.openers import ImageOpener

from .. import atomic
from ..studies import StudyError, parse_image_id
from ..vocabulary import VOCABULARY, allowed_values

logger = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_SAFE_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
# Label values a saved label of each sequence may hold (mslesion.vocabulary: 1 = MS lesion, 2 = new MS lesion on a
# FLAIR; 1 = enhancing lesion on a post-contrast T1).
LABEL_VALUES = {suffix: allowed_values(suffix) for suffix in VOCABULARY}
AFFINE_TOLERANCE_MM = 1e-2
# What an MRI volume can plausibly be. A 0.5 mm isotropic whole head is about 512x512x400 = 1e8 voxels.
MAX_VOXELS = int(os.environ.get("MSAPP_MAX_VOXELS", 2**28))
MIN_VOXEL_MM, MAX_VOXEL_MM = 0.05, 20.0
TMP_SUFFIX = ".msapp-tmp"


def check_id(value: str, what: str = "Image id") -> str:
    """An image id that is a plain file name stem: no path separators, no '..', no odd characters."""
    if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{str(value)[:80]}..."
        raise StudyError(
            422,
            f"{what} '{shown}' is not allowed: use letters, digits, '.', '_' and '-' only (no paths), "
            "e.g. sub-01_ses-01_FLAIR.",
        )
    return value


def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _SAFE_TAG.match(tag):
        shown = tag if isinstance(tag, str) and len(tag) <= 80 else f"{str(tag)[:80]}..."
        raise StudyError(
            422, f"Label tag '{shown}' is not allowed: use letters, digits, '_' and '-' only, e.g. final."
        )
    return tag


def nifti_extension(filename: str) -> str:
    """'.nii.gz' or '.nii' from an upload's file name, or a 422 that says what to send instead."""
    name = (filename or "").lower()
    for ext in NIFTI_EXTENSIONS:
        if name.endswith(ext):
            return ext
    if name.endswith(".dcm") or name.endswith(".dicom"):
        raise StudyError(
            415,
            f"'{filename}' is a DICOM file; this server stores NIfTI volumes. Convert the series (e.g. dcm2niix) "
            "and upload the .nii.gz.",
        )
    raise StudyError(415, f"'{filename}' is not a NIfTI file name; upload a .nii.gz (or .nii) volume.")


def _is_dicom(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _gzip_or_nifti_magic(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(4)


def _raw_pixdim(path: str, image) -> list[float] | None:
    """pixdim[1:4] as written in the file (nib.load applies its header fixes)."""
    try:
        with ImageOpener(path) as handle:
            header = type(image.header).from_fileobj(handle, check=False)
        return [float(z) for z in header["pixdim"][1:4]]
    except Exception:
        return None


def _quiet(error: Exception, path: str) -> str:
    """An exception's message without the server's temp path in it."""
    return str(error).replace(f"File {path} ", "The file ").replace(path, "the file")


def check_header(image: nib.Nifti1Image, what: str, raw_pixdim=None) -> tuple[int, ...]:
    """Everything that can be refused from the header alone: dimensions, size, data type, geometry."""
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) < 3 or (len(shape) == 3 and min(shape) < 2):
        raise StudyError(
            422, f"The {what} must be a 3D volume; it has shape {shape}, which is a 2D image. Export the whole series."
        )
    if len(shape) > 3:
        raise StudyError(
            422,
            f"The {what} must be a 3D volume; it has shape {shape} ({len(shape)}D, {int(np.prod(shape[3:]))} "
            "volumes). Upload one 3D volume per file.",
        )
    voxels = int(np.prod(shape, dtype=np.float64))
    if voxels > MAX_VOXELS:
        dtype = image.header.get_data_dtype()
        gigabytes = voxels * max(dtype.itemsize, 1) / 1e9
        raise StudyError(
            413,
            f"The {what} announces {'x'.join(map(str, shape))} = {voxels:.3g} voxels ({gigabytes:.3g} GB) in its "
            f"header; this server accepts volumes of at most {MAX_VOXELS:.3g} voxels. Check the file's header.",
        )
    dtype = image.header.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise StudyError(422, f"The {what} has voxel type {dtype}; upload integer or real-valued voxels.")
    # nibabel quietly "fixes" zero and negative pixdim on load (to 1 and to their absolute value): judge the
    # values the file really holds, and the affine the pipeline will resample with.
    zooms = [float(z) for z in (raw_pixdim if raw_pixdim is not None else image.header.get_zooms()[:3])]
    affine = np.asarray(image.affine, dtype=np.float64)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0)) if np.isfinite(affine).all() else np.full(3, np.nan)
    for sizes, where in ((zooms, "header (pixdim)"), (spacing.tolist(), "affine (sform/qform)")):
        if not all(np.isfinite(z) and MIN_VOXEL_MM <= z <= MAX_VOXEL_MM for z in sizes):
            shown = ", ".join(f"{z:.3g}" for z in sizes)
            raise StudyError(
                422,
                f"The {what} has voxel size ({shown}) mm in its {where}; each voxel size must be between "
                f"{MIN_VOXEL_MM} and {MAX_VOXEL_MM} mm. Fix the header or export the series again.",
            )
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise StudyError(422, f"The {what} has a degenerate orientation (its affine is singular); fix its header.")
    return shape


def read_volume(path: str, what: str, kind: str = "image") -> nib.Nifti1Image:
    """A fully readable, plausible 3D NIfTI volume, or a 4xx that says why not.

    The header is checked before any voxel is read (``nib.load`` reads only the header), so a tiny file announcing
    4000^3 voxels is refused without allocating them. ``kind`` is "image" (must not be blank) or "label".
    """
    if _is_dicom(path):
        raise StudyError(
            415,
            f"The {what} is a DICOM file; this server stores NIfTI volumes. Convert the series (e.g. dcm2niix) and "
            "upload the .nii.gz.",
        )
    try:
        if os.path.getsize(path) == 0:
            raise ValueError("the file is empty")
        image = nib.load(path)
    except Exception as error:  # nibabel raises many types for corrupt or truncated files
        raise StudyError(
            422, f"The {what} is not a readable NIfTI file ({type(error).__name__}: {_quiet(error, path)}). "
            "Upload a .nii.gz."
        ) from error
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise StudyError(422, f"The {what} is a {type(image).__name__}, not a NIfTI file. Upload a .nii.gz.")
    check_header(image, what, _raw_pixdim(path, image))
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as error:
        raise StudyError(
            422,
            f"The {what} is not a readable NIfTI file: its voxels cannot be read, the file is truncated or corrupt "
            f"({type(error).__name__}: {_quiet(error, path)}). Upload it again.",
        ) from error
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise StudyError(422, f"The {what} holds NaN or infinite voxels; export it again from the viewer.")
    if kind == "image" and data.size and data.min() == data.max():
        raise StudyError(
            422, f"The {what} is blank: every voxel is {data.flat[0]:g}. Export the image again; it holds no anatomy."
        )
    image.msapp_data = data  # reused by label checks without reading the file twice
    return image


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _tmp_prefix(dest: str) -> str:
    """Temp names carry the writer's pid: start-up clean-up removes only those of processes that are gone (the
    training subprocess opens the same datastore while the server may be saving)."""
    return f".{os.path.basename(dest)}.{os.getpid()}."


def _writer_alive(name: str) -> bool:
    match = re.search(r"\.(\d+)\.[^.]*" + re.escape(TMP_SUFFIX) + "$", name)
    if not match:
        return False
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def atomic_copy(src: str, dest: str, compress: bool = False) -> None:
    """Copy ``src`` to ``dest`` so that ``dest`` is always either its old content or all of the new one.

    The temp file (mslesion.atomic) lives in dest's folder and its name ends in ``.msapp-tmp``, which matches no
    datastore extension, so a leftover is never taken for an image or label.
    """
    atomic.copy_file(src, dest, compress=compress, prefix=_tmp_prefix(dest), suffix=TMP_SUFFIX, mode=0o644)


def atomic_write_text(dest: str, text: str) -> None:
    atomic.write_text(dest, text, prefix=_tmp_prefix(dest), suffix=TMP_SUFFIX, mode=0o644)


def remove_stale_temp_files(root: str) -> list[str]:
    """Temp files an interrupted save left behind (the finished files are intact); returns what was removed."""
    removed = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.startswith(".") and name.endswith(TMP_SUFFIX) and not _writer_alive(name):
                path = os.path.join(folder, name)
                try:
                    os.unlink(path)
                    removed.append(path)
                except OSError:
                    pass
    if removed:
        logger.warning("removed %d temp file(s) of interrupted saves: %s", len(removed), removed)
    return removed


class ValidatingDatastore(LocalDatastore):
    """LocalDatastore whose uploads and label saves are checked before they are written, and written atomically."""

    def __init__(self, datastore_path: str, *args, datastore_config: str = "datastore_v2.json", **kwargs):
        os.makedirs(datastore_path, exist_ok=True)
        remove_stale_temp_files(datastore_path)
        self._set_aside_unreadable_index(os.path.join(datastore_path, datastore_config))
        super().__init__(datastore_path, *args, datastore_config=datastore_config, **kwargs)

    @staticmethod
    def _set_aside_unreadable_index(path: str) -> None:
        """An index that does not parse (written by a stock server that was killed mid-write) is moved aside;
        the datastore is then rebuilt from the files, which hold every image and label."""
        if not os.path.exists(path):
            return
        try:
            LocalDatastoreModel.model_validate_json(Path(path).read_text())
        except (ValueError, OSError) as error:
            aside = f"{path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
            logger.error("datastore index %s is unreadable (%s); moved to %s, rebuilt from files", path, error, aside)
            os.replace(path, aside)

    # -- index --------------------------------------------------------------------------------------------------

    def _update_datastore_file(self, lock=True):
        def write():
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write_text(self._datastore_config_path, text)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()

    def _reload_unlocked(self) -> None:
        """Re-read the index if another process (the training subprocess) rewrote it; caller holds the lock."""
        try:
            if os.path.exists(self._datastore_config_path):
                ts = os.stat(self._datastore_config_path).st_mtime
                if ts != self._config_ts:
                    with open(self._datastore_config_path) as handle:
                        model = LocalDatastoreModel.model_validate_json(handle.read())
                    model.base_path = self._datastore_path
                    self._datastore = model
                    self._config_ts = ts
        except (ValueError, OSError) as error:
            logger.error("could not re-read the datastore index: %s", error)

    # -- images -------------------------------------------------------------------------------------------------

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        check_id(image_id)
        ext = nifti_extension(image_filename)
        if image_id in self._datastore.objects:
            if self.same_image(image_id, image_filename):  # Slicer uploads a local copy before Submit Label
                logger.info("upload of %s: identical to the stored image, nothing written", image_id)
                return image_id
            raise StudyError(
                409,
                f"Image '{image_id}' already exists and the uploaded volume differs from it (other voxels or grid); "
                "its saved labels belong to the stored file. Upload under a new id (in Slicer: rename the volume), or "
                "delete it first (DELETE /datastore/image?id=...).",
            )
        read_volume(image_filename, "uploaded image", kind="image")
        if parse_image_id(image_id) is None:
            logger.warning("image %s has no BIDS-style name; tasks will not find its companions", image_id)
        name = self._filename(image_id, ext)
        dest = os.path.realpath(os.path.join(self._datastore.image_path(), name))
        with FileLock(self._lock_file):
            self._reload_unlocked()
            if image_id in self._datastore.objects:
                raise StudyError(409, f"Image '{image_id}' already exists; upload under a new id.")
            atomic_copy(image_filename, dest)
            info = dict(image_info or {}, ts=int(time.time()), name=name)
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        return image_id

    def same_image(self, image_id: str, filename: str) -> bool:
        """Whether an upload is the stored image again: the same bytes, or the same grid and voxel values (a viewer
        that saves a loaded volume writes another file of the same image)."""
        stored = self.get_image_uri(image_id)
        if not stored or not os.path.exists(stored):
            return False
        if os.path.getsize(stored) == os.path.getsize(filename) and _sha256(stored) == _sha256(filename):
            return True
        try:
            new = read_volume(filename, "uploaded image", kind="image")
            old = nib.load(stored)
        except StudyError:
            return False
        if tuple(new.shape[:3]) != tuple(old.shape[:3]):
            return False
        if float(np.abs(np.asarray(new.affine) - np.asarray(old.affine)).max()) > AFFINE_TOLERANCE_MM:
            return False
        return bool(np.array_equal(np.asanyarray(new.msapp_data).reshape(old.shape[:3]),
                                   np.asanyarray(old.dataobj).reshape(old.shape[:3])))

    def remove_image(self, image_id: str) -> None:
        if image_id not in self._datastore.objects:
            raise StudyError(404, f"Image '{image_id}' is not in the datastore; nothing was deleted.")
        super().remove_image(image_id)

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        if image_id not in self._datastore.objects:
            raise StudyError(404, f"Image '{image_id}' is not in the datastore; list them with GET /datastore/.")
        super().update_image_info(image_id, info)

    # -- labels -------------------------------------------------------------------------------------------------

    def check_label(self, image_id: str, label_filename: str, label_tag: str) -> None:
        """Everything save_label checks before writing: a 4xx that names the problem, or nothing."""
        if image_id not in self._datastore.objects:
            raise StudyError(404, f"Image '{image_id}' is not in the datastore; a label needs its image first.")
        check_tag(label_tag)
        nifti_extension(label_filename)
        label = read_volume(label_filename, "label", kind="label")
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
        data = label.msapp_data
        values = np.unique(data)
        if data.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
            fractional = [float(v) for v in values[values != np.round(values)][:5]]
            raise StudyError(422, f"A label holds whole numbers (0 = background); this one holds {fractional}.")
        present = {int(v) for v in values.tolist()}
        ref = parse_image_id(image_id)
        allowed = LABEL_VALUES.get(ref.suffix) if ref else None
        if allowed is None:
            allowed = set(range(256))
        if not present <= allowed:
            shown = sorted(allowed) if len(allowed) < 10 else "0..255"
            names = VOCABULARY.get(ref.suffix, {}) if ref else {}
            meaning = f" ({', '.join(f'{v} = {n}' for n, v in names.items())})" if names else ""
            raise StudyError(
                422,
                f"The label of a {ref.suffix if ref else 'image'} may hold only values {shown}{meaning}; "
                f"this one holds {sorted(present - allowed)[:10]}. From Slicer, Submit Label sends the segment "
                "names with the label and they are stored as these values; name your segments after them.",
            )

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        self.check_label(image_id, label_filename, label_tag)
        return self.store_checked_label(image_id, label_filename, label_tag, label_info)

    def store_checked_label(self, image_id: str, label_filename: str, label_tag: str,
                            label_info: dict[str, Any]) -> str:
        """The write half of save_label, for a label ``check_label`` has already passed (a subclass that checks
        before doing more, e.g. storing a DICOM SEG, does not pay for the check twice)."""
        ext = nifti_extension(label_filename)
        label_path = self._datastore.label_path(label_tag)
        name = self._filename(image_id, ".nii.gz")  # stored compressed whatever was sent: one file per label
        dest = os.path.join(label_path, name)
        with FileLock(self._lock_file):
            self._reload_unlocked()
            obj = self._datastore.objects.get(image_id)
            if obj is None:
                raise StudyError(404, f"Image '{image_id}' was deleted while its label was being saved.")
            os.makedirs(label_path, exist_ok=True)
            atomic_copy(label_filename, dest, compress=ext == ".nii")
            other = os.path.join(label_path, self._filename(image_id, ".nii"))
            if os.path.exists(other):
                os.unlink(other)
            info = dict(label_info or {}, ts=int(time.time()), name=name)
            obj.labels[label_tag] = DataModel(info=info, ext=".nii.gz")
            self._update_datastore_file(lock=False)
        logger.info("saved label %s of %s (tag %s)", name, image_id, label_tag)
        return image_id

    def remove_label(self, label_id: str, label_tag: str) -> None:
        obj = self._datastore.objects.get(label_id)
        if obj is None:
            raise StudyError(404, f"Image '{label_id}' is not in the datastore; no label was deleted.")
        if label_tag not in obj.labels:
            tags = ", ".join(obj.labels) or "none"
            raise StudyError(404, f"Image '{label_id}' has no label tagged '{label_tag}' (it has: {tags}).")
        super().remove_label(label_id, label_tag)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        if self._datastore.label(label_id, label_tag) is None:
            raise StudyError(404, f"There is no label '{label_id}' tagged '{label_tag}' in the datastore.")
        super().update_label_info(label_id, label_tag, info)

    # -- consistency (used by tests and at start-up) ---------------------------------------------------------------

    def inconsistencies(self) -> list[str]:
        """What is wrong between the index and the files: listed labels that are missing or unreadable."""
        problems = []
        for image_id, obj in self._datastore.objects.items():
            if not os.path.exists(self.get_image_uri(image_id)):
                problems.append(f"image {image_id} is listed but missing")
            for tag in obj.labels:
                path = self.get_label_uri(image_id, tag)
                if not os.path.exists(path):
                    problems.append(f"label {image_id} ({tag}) is listed but missing")
                    continue
                try:
                    np.asanyarray(nib.load(path).dataobj)
                except Exception as error:
                    problems.append(f"label {image_id} ({tag}) does not load: {error}")
        return problems
