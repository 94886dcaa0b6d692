"""A MONAI Label datastore on a DICOMweb server (a PACS, Orthanc): image ids are SeriesInstanceUIDs.

Series are listed with QIDO-RS (MR by default), fetched with WADO-RS into a local cache the first time a task
needs them and converted to NIfTI there (a ``ValidatingDatastore``, so every cached volume and label is checked
and written atomically). Cached files are named by the series' BIDS-style alias, so the training code finds
companions and earlier visits as in a local datastore. A saved final label becomes a DICOM SEG stored on the
server; ``datalist()`` (what training reads) pulls every SEG that references a listed series from the server,
so labels saved by this server, by another one, or by OHIF are all found again.

Where this departs from MONAI Label's ``DICOMWebDatastore``: no dcmqi binary (downloaded at run time) for SEG;
an empty label can be saved; the series list is re-read after seconds, not cached for two hours; every request
has a timeout, and an unreachable server is a 503 naming it instead of a hang.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import requests
from monailabel.interfaces.datastore import DefaultLabelTag

from ..server.datastore import ValidatingDatastore
from ..studies import StudyError
from .catalogue import SeriesCatalogue, unreachable
from .seg import label_to_seg, lps_affine, referenced_series, seg_to_label, segment_names, write_label_nifti
from .series import retrieve_instances, series_to_nifti

logger = logging.getLogger(__name__)


_FRAME_TAGS = ("00080016", "00080018", "0020000E", "00200032")  # SOP class, SOP instance, series, position


def _no_bulk_data(tag, vr, uri) -> bytes:
    """Metadata only: pixel data (a bulk data URI in WADO-RS metadata) is not fetched."""
    return b""


def _remote(method):
    """Network errors of a datastore call become a 503 that names the server (a StudyError reaches the client)."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except requests.RequestException as error:
            raise unreachable(self.url, error) from error

    return call


class DicomWebDatastore(ValidatingDatastore):
    """Series of a DICOMweb server as images, their DICOM SEGs as final labels, with a local NIfTI cache."""

    def __init__(self, client, catalogue: SeriesCatalogue, cache_dir: str | os.PathLike):
        self.client, self.url = client, catalogue.url
        self.catalogue = catalogue
        catalogue.image_uri = self.get_image_uri  # resolution hands out local files, fetched on demand
        self._fetching = threading.Lock()
        self._seg_refs: dict[str, str | None] = {}  # SEG series -> the series it labels (immutable, so cached)
        super().__init__(str(cache_dir), extensions=["*.nii.gz", "*.nii"], auto_reload=False)

    def name(self) -> str:
        return self.url

    def description(self) -> str:
        return f"DICOMweb {self.url} (cache {self._datastore_path})"

    # -- images -------------------------------------------------------------------------------------------------

    @_remote
    def list_images(self) -> list[str]:
        return sorted(self.catalogue.series())

    def _cache_id(self, series_uid: str) -> str:
        return self.catalogue.alias(series_uid) or series_uid

    @_remote
    def get_image_uri(self, image_id: str) -> str:
        """Local NIfTI of a series (by SeriesInstanceUID or BIDS alias), fetched and converted the first time."""
        series_uid = self.catalogue.resolve(image_id)
        if series_uid is None:
            return ""
        cache_id = self._cache_id(series_uid)
        with self._fetching:
            obj = self._datastore.objects.get(cache_id)
            if obj is not None and obj.image.info.get("SeriesInstanceUID") == series_uid:
                return super().get_image_uri(cache_id)
            if obj is not None:  # the alias now names another series (a repeated sequence): fetch the new one
                super().remove_image(cache_id)
            info = self.catalogue.series()[series_uid]
            with tempfile.TemporaryDirectory(prefix="msapp-fetch-") as folder:
                path = series_to_nifti(self.client, series_uid, Path(folder) / "series.nii.gz", info.study_uid)
                self.add_image(cache_id, str(path), info.info())
            logger.info("fetched series %s (%s) as %s", series_uid, info.description, cache_id)
            return super().get_image_uri(cache_id)

    @_remote
    def get_image_info(self, image_id: str) -> dict[str, Any]:
        series_uid = self.catalogue.resolve(image_id)
        if series_uid is None:
            raise StudyError(404, f"Series '{image_id}' is not on {self.url}; list them with GET /datastore/.")
        info = dict(self.catalogue.series()[series_uid].info())
        cached = self._datastore.objects.get(self._cache_id(series_uid))
        if cached is not None:
            info.update({k: v for k, v in cached.image.info.items() if k not in info})
        info["sequence"] = (self.catalogue.ref(series_uid).suffix if self.catalogue.ref(series_uid) else None)
        return info

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        self.get_image_uri(image_id)
        super().update_image_info(self._cache_id(self.catalogue.resolve(image_id)), info)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        if image_info.get("SeriesInstanceUID") is None:
            raise StudyError(
                405, f"This server's studies are on {self.url}: store new series on the PACS (DICOM or STOW-RS), "
                "not with PUT /datastore/image.",
            )
        return super().add_image(image_id, image_filename, image_info)

    # -- labels -------------------------------------------------------------------------------------------------

    def _sources(self, series_uid: str) -> list[pydicom.Dataset]:
        """The series' instances without their pixels (WADO-RS metadata): what a SEG references."""
        info = self.catalogue.series()[series_uid]
        metadata = self.client.retrieve_series_metadata(info.study_uid, series_uid)
        if not metadata:
            raise StudyError(404, f"Series {series_uid} has no instances on {self.url}.")
        # the first in full (patient, study, frame of reference); of the others what a frame reference needs
        # (pydicom's from_json costs ~9 ms per full instance: 1.7 s for a 190-slice series)
        first = pydicom.Dataset.from_json(metadata[0], bulk_data_uri_handler=_no_bulk_data)
        return [first] + [pydicom.Dataset.from_json({k: m[k] for k in _FRAME_TAGS if k in m}) for m in metadata[1:]]

    @_remote
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        series_uid = self.catalogue.resolve(image_id)
        if series_uid is None:
            raise StudyError(404, f"Series '{image_id}' is not on {self.url}; a label needs its image first.")
        self.get_image_uri(series_uid)
        cache_id = self._cache_id(series_uid)
        if label_filename.endswith(".bin"):  # OHIF's MONAI Label panel sends raw voxels in the series' order
            with tempfile.TemporaryDirectory(prefix="msapp-bin-") as folder:
                nifti = self.bin_to_nifti(cache_id, label_filename, Path(folder) / "label.nii.gz")
                return self.save_label(series_uid, str(nifti), label_tag, label_info)
        self.check_label(cache_id, label_filename, label_tag)
        info = dict(label_info or {})
        if label_tag == DefaultLabelTag.FINAL.value:
            image = nib.load(super().get_image_uri(cache_id))
            label = np.asanyarray(nib.load(label_filename).dataobj).astype(np.uint8)
            ref = self.catalogue.ref(series_uid)
            present = np.flatnonzero(np.bincount(label.ravel())).tolist()  # np.unique sorts 9 M voxels: 0.3 s
            seg = label_to_seg(label, lps_affine(image), self._sources(series_uid),
                               segment_names(ref.suffix if ref else None, present))
            self.client.store_instances([seg])
            self._seg_refs[str(seg.SeriesInstanceUID)] = series_uid
            info.update(SegSeriesInstanceUID=str(seg.SeriesInstanceUID), SeriesInstanceUID=series_uid)
            logger.info("stored label of %s as DICOM SEG %s on %s", series_uid, seg.SeriesInstanceUID, self.url)
        self.store_checked_label(cache_id, label_filename, label_tag, info)  # checked above, before the PACS saw it
        return series_uid

    def bin_to_nifti(self, cache_id: str, label_filename: str, dest: Path) -> Path:
        """A raw uint8 label (one byte per voxel, columns fastest, then rows, then slices: the order OHIF's volume
        and the cached NIfTI share) as a NIfTI on the cached image's grid; a 422 when its size does not fit."""
        image = nib.load(super().get_image_uri(cache_id))
        shape = tuple(int(n) for n in image.shape[:3])
        size = os.path.getsize(label_filename)
        if size != int(np.prod(shape)):
            raise StudyError(
                422, f"The raw label has {size} bytes; series {cache_id} has {'x'.join(map(str, shape))} = "
                f"{int(np.prod(shape))} voxels (one uint8 byte each).",
            )
        label = np.fromfile(label_filename, dtype=np.uint8).reshape(shape, order="F")
        return write_label_nifti(label, image, dest)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        series_uid = self.catalogue.resolve(label_id)
        return super().get_label_uri(self._cache_id(series_uid) if series_uid else label_id, label_tag)

    @_remote
    def final_segs(self) -> dict[str, str]:
        """The newest DICOM SEG of each listed series on the server: {series UID: SEG series UID}."""
        found = self.client.search_for_series(search_filters={"Modality": "SEG"},
                                              fields=["0020000D", "00080021", "00080031"])
        listed = self.catalogue.series()
        newest: dict[str, tuple] = {}
        for entry in found:
            seg_uid = entry["0020000E"]["Value"][0]
            study_uid = entry["0020000D"]["Value"][0]
            if seg_uid not in self._seg_refs:
                metadata = self.client.retrieve_series_metadata(study_uid, seg_uid)
                first = pydicom.Dataset.from_json(metadata[0], bulk_data_uri_handler=_no_bulk_data) if metadata \
                    else None
                self._seg_refs[seg_uid] = referenced_series(first) if first is not None else None
            target = self._seg_refs[seg_uid]
            if target not in listed:
                continue
            when = "".join((entry.get(t, {}).get("Value") or [""])[0] for t in ("00080021", "00080031"))
            if target not in newest or (when, seg_uid) > newest[target]:
                newest[target] = (when, seg_uid)
        return {target: seg_uid for target, (_, seg_uid) in newest.items()}

    def pull_label(self, series_uid: str, seg_uid: str) -> None:
        """Bring a SEG from the server into the cache as the series' final label (unless it is there already)."""
        cache_id = self._cache_id(series_uid)
        obj = self._datastore.objects.get(cache_id)
        final = obj.labels.get(DefaultLabelTag.FINAL.value) if obj is not None else None
        if final is not None and final.info.get("SegSeriesInstanceUID") == seg_uid:
            return
        image = nib.load(self.get_image_uri(series_uid))
        study_uid = self.catalogue.series()[series_uid].study_uid
        seg = retrieve_instances(self.client, seg_uid, self._seg_study(seg_uid, study_uid))[0]
        label = seg_to_label(seg, lps_affine(image), image.shape[:3])
        with tempfile.TemporaryDirectory(prefix="msapp-seg-") as folder:
            path = write_label_nifti(label, image, Path(folder) / "label.nii.gz")
            ValidatingDatastore.save_label(self, cache_id, str(path), DefaultLabelTag.FINAL.value,
                                           {"SegSeriesInstanceUID": seg_uid, "SeriesInstanceUID": series_uid})
        logger.info("pulled DICOM SEG %s as the label of %s", seg_uid, series_uid)

    def _seg_study(self, seg_uid: str, default: str) -> str:
        found = self.client.search_for_series(search_filters={"SeriesInstanceUID": seg_uid}, fields=["0020000D"])
        return found[0]["0020000D"]["Value"][0] if found else default

    @_remote
    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        return sorted(self.final_segs())

    @_remote
    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        return sorted(set(self.list_images()) - set(self.final_segs()))

    @_remote
    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        """Image and label paths of every labelled series, labels pulled from the server's SEGs first."""
        segs = self.final_segs()
        for series_uid, seg_uid in segs.items():
            self.pull_label(series_uid, seg_uid)
        wanted = {self._cache_id(uid) for uid in segs}
        return [entry for entry in super().datalist(full_path)
                if os.path.basename(entry["image"]).split(".nii")[0] in wanted]

    def status(self) -> dict[str, Any]:
        labelled = self.get_labeled_images()
        return {"total": len(self.list_images()), "completed": len(labelled),
                "label_tags": {DefaultLabelTag.FINAL.value: len(labelled)}}

    def json(self):
        series = self.catalogue.series()
        labelled = self.final_segs()
        objects = {}
        for uid, info in series.items():
            ref = self.catalogue.ref(uid)
            objects[uid] = {"image": {"info": {**info.info(), "sequence": ref.suffix if ref else None,
                                               "alias": ref.image_id if ref else None}},
                            "labels": {DefaultLabelTag.FINAL.value: {"info": {"SegSeriesInstanceUID": labelled[uid]}}}
                            if uid in labelled else {}}
        return {"name": self.name(), "objects": objects}


def open_datastore(url: str, cache_dir: str | os.PathLike, patterns: dict | None = None, auth=None,
                   search_filter: dict | None = None, timeout: float = 30.0) -> DicomWebDatastore:
    """Connect to a DICOMweb server; an unreachable one is a clear RuntimeError at start-up, not a hang."""
    from .export import dicomweb_client

    client = dicomweb_client(url, auth, timeout=timeout)
    catalogue = SeriesCatalogue(client, patterns, search_filter, url=url)
    try:
        series = catalogue.series()
    except StudyError as error:
        raise RuntimeError(
            f"msapp cannot reach the DICOMweb server {url}: {error.message} (make serve-ohif starts a local Orthanc)"
        ) from error
    logger.info("DICOMweb %s: %d series, %d with a known sequence", url, len(series), len(catalogue.refs()))
    store = DicomWebDatastore(client, catalogue, cache_dir)
    store.timeout = timeout  # also the OHIF proxy's (mslesion.server.dicom_proxy)
    return store


def open_datastore_from_conf(url: str, conf: dict, settings) -> DicomWebDatastore:
    """The app's DICOMweb datastore from ``--conf`` (sequence_patterns, dicomweb_cache, dicomweb_timeout) and MONAI
    Label's settings (credentials, search filter; its default filter, CT, is replaced by MR)."""
    from .catalogue import load_patterns

    user = settings.MONAI_LABEL_DICOMWEB_USERNAME or getattr(settings, "MONAI_LABEL_DATASTORE_USERNAME", "")
    password = settings.MONAI_LABEL_DICOMWEB_PASSWORD or getattr(settings, "MONAI_LABEL_DATASTORE_PASSWORD", "")
    search_filter = dict(settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER or {})
    if search_filter.get("Modality") in (None, "CT"):
        search_filter["Modality"] = "MR"
    cache = conf.get("dicomweb_cache") or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or os.path.join(
        Path.home(), ".cache", "msapp", "dicomweb", hashlib.sha256(url.encode()).hexdigest()[:16]
    )
    return open_datastore(url, cache, load_patterns(conf.get("sequence_patterns")),
                          (user, password) if user and password else None, search_filter,
                          float(conf.get("dicomweb_timeout", 30)))
