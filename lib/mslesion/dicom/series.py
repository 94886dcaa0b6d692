"""Fetch one DICOM series over WADO-RS and turn it into a NIfTI volume (what the tasks read)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pydicom
import SimpleITK as sitk

from ..studies import StudyError


def retrieve_instances(client, series_uid: str, study_uid: str | None = None) -> list[pydicom.Dataset]:
    """All instances of a series; the study is looked up when not given (WADO-RS needs it)."""
    if study_uid is None:
        found = client.search_for_series(search_filters={"SeriesInstanceUID": series_uid}, fields=["0020000D"])
        if not found:
            raise StudyError(404, f"Series {series_uid} is not on the DICOMweb server.")
        study_uid = found[0]["0020000D"]["Value"][0]
    return client.retrieve_series(study_uid, series_uid)


def series_to_nifti(client, series_uid: str, dest: Path, study_uid: str | None = None) -> Path:
    """Write the series as a NIfTI volume at ``dest`` (slices sorted by position, geometry from the DICOM tags)."""
    instances = retrieve_instances(client, series_uid, study_uid)
    if not instances:
        raise StudyError(404, f"Series {series_uid} has no instances on the DICOMweb server.")
    with tempfile.TemporaryDirectory(prefix="msapp-series-") as folder:
        for i, ds in enumerate(instances):
            pydicom.dcmwrite(os.path.join(folder, f"{i:05d}.dcm"), ds, write_like_original=False)
        reader = sitk.ImageSeriesReader()
        names = reader.GetGDCMSeriesFileNames(folder, series_uid)
        if len(names) < 2:
            raise StudyError(
                422, f"Series {series_uid} has {len(names)} image(s); the models need a 3D series of several slices."
            )
        reader.SetFileNames(names)
        image = reader.Execute()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(dest))
    return dest
