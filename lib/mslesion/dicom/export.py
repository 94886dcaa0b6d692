"""BIDS-named NIfTI volumes (the phantoms, or anyone's) as DICOM MR series, and their upload over STOW-RS.

Each ``sub-<S>_ses-<T>_<suffix>.nii.gz`` becomes one MR series: the subject a patient, the session a study
(two sessions: two studies of the same patient, months apart), the suffix a SeriesDescription a scanner would
write ("AX FLAIR", "AX T1", ...). UIDs are derived from a namespace string and the names, so the same folder
exported twice gives the same UIDs (and Orthanc keeps one copy).

Geometry: the volume is reoriented to LPS, the DICOM patient axes, so slices are axial, rows run anterior to
posterior and columns right to left; ImagePositionPatient of slice k is the world position of voxel (0, 0, k)
and ImageOrientationPatient holds the row and column directions. A reader (SimpleITK, OHIF) rebuilds the
original affine from these tags.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from ..studies import FLAIR, T1, T1_POST, T2, parse_image_id

logger = logging.getLogger(__name__)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: What a scanner console calls each sequence (and what the default SeriesDescription patterns recognise).
SERIES_DESCRIPTIONS = {FLAIR: "AX FLAIR", T1: "AX T1", T2: "AX T2", T1_POST: "AX T1 POST GAD"}
SERIES_NUMBERS = {T1: 2, T2: 3, FLAIR: 4, T1_POST: 10}
#: Acquisition parameters that make each series look like its sequence (TR, TE, TI in ms; scanning sequence).
ACQUISITION = {
    FLAIR: (9000.0, 90.0, 2500.0, "SE\\IR"),
    T1: (600.0, 12.0, None, "SE"),
    T2: (4000.0, 100.0, None, "SE"),
    T1_POST: (600.0, 12.0, None, "SE"),
}
BASE_DATE = datetime.date(2024, 1, 8)
DAYS_BETWEEN_SESSIONS = 182
DEFAULT_NAMESPACE = "msapp-phantom"


def uid(namespace: str, *parts: str) -> str:
    """A UID that depends only on its inputs, so exports are repeatable: the 2.25 form (a UUID as a decimal
    integer) of a name-based UUID (pydicom's generate_uid ignores its entropy sources when prefix is None)."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '/'.join([namespace, *parts])).int}"


def session_number(session: str) -> int:
    return int(session) if session.isdigit() else 1


def study_datetime(subject: str, session: str) -> datetime.datetime:
    """Visits of a subject half a year apart, in session order; subjects on different weeks."""
    day = BASE_DATE + datetime.timedelta(days=7 * (int(subject) if subject.isdigit() else 0)
                                         + DAYS_BETWEEN_SESSIONS * (session_number(session) - 1))
    return datetime.datetime.combine(day, datetime.time(9, 30))


def to_lps(image: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """The voxels and the voxel->LPS world matrix of a volume reoriented so its axes run L, P, S."""
    lps = nib.orientations.axcodes2ornt(("L", "P", "S"))
    current = nib.orientations.io_orientation(image.affine)
    transform = nib.orientations.ornt_transform(current, lps)
    reoriented = image.as_reoriented(transform)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    return np.asanyarray(reoriented.dataobj), ras_to_lps @ reoriented.affine


def _int16(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Voxels as int16 with the rescale (slope, intercept) that gives the originals back."""
    if data.dtype.kind in "iub" and data.min() >= -32768 and data.max() <= 32767:
        return data.astype(np.int16), 1.0, 0.0
    lo, hi = float(data.min()), float(data.max())
    slope = (hi - lo) / 65000.0 or 1.0
    return np.round((data - lo) / slope - 32500).astype(np.int16), slope, lo + 32500 * slope


def geometry(affine_lps: np.ndarray) -> dict:
    """ImageOrientationPatient, PixelSpacing and slice step of an LPS voxel matrix whose slices are axis 2."""
    columns_axis, rows_axis, slice_axis = affine_lps[:3, 0], affine_lps[:3, 1], affine_lps[:3, 2]
    column_spacing, row_spacing = float(np.linalg.norm(columns_axis)), float(np.linalg.norm(rows_axis))
    return {
        "orientation": [*(columns_axis / column_spacing), *(rows_axis / row_spacing)],
        "pixel_spacing": [row_spacing, column_spacing],  # DICOM order: between rows, between columns
        "slice_step": float(np.linalg.norm(slice_axis)),
    }


def _ds(value: float) -> str:
    return f"{value:.6g}"


def series_datasets(image: nib.Nifti1Image, subject: str, session: str, suffix: str,
                    namespace: str = DEFAULT_NAMESPACE, description: str | None = None) -> list[Dataset]:
    """One MR series (a Dataset per axial slice) of a 3D volume."""
    data, affine = to_lps(image)
    pixels, slope, intercept = _int16(np.asarray(data))
    geo = geometry(affine)
    when = study_datetime(subject, session)
    study_uid = uid(namespace, subject, session, "study")
    series_uid = uid(namespace, subject, session, suffix, "series")
    tr, te, ti, scanning = ACQUISITION.get(suffix, (None, None, None, "SE"))
    window_lo, window_hi = np.percentile(pixels, [1, 99.5]) * slope + intercept
    datasets = []
    for k in range(pixels.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = uid(namespace, subject, session, suffix, str(k))
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.preamble = b"\0" * 128  # a Part 10 file: STOW-RS stores it as sent, readers look for "DICM"
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.PatientName = f"Phantom^{subject}"
        ds.PatientID = f"MSPHANTOM-{subject}"
        ds.PatientBirthDate = "19800101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
        ds.StudyID = f"S{session}"
        ds.AccessionNumber = f"A{subject}{session}"[:16]
        ds.StudyDescription = f"MRI BRAIN MS PHANTOM visit {session}"
        ds.ReferringPhysicianName = ""
        ds.Modality = "MR"
        ds.Manufacturer = "msapp phantom"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = SERIES_NUMBERS.get(suffix, 20)
        ds.SeriesDescription = description or SERIES_DESCRIPTIONS.get(suffix, suffix)
        ds.FrameOfReferenceUID = uid(namespace, subject, session, "frame")
        ds.PositionReferenceIndicator = ""
        ds.BodyPartExamined = "BRAIN"
        ds.ScanningSequence = scanning
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        if tr is not None:
            ds.RepetitionTime, ds.EchoTime = _ds(tr), _ds(te)
        if ti is not None:
            ds.InversionTime = _ds(ti)
        ds.MagneticFieldStrength = "3"
        ds.InstanceNumber = k + 1
        position = affine @ np.array([0.0, 0.0, float(k), 1.0])
        ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
        ds.ImageOrientationPatient = [_ds(v) for v in geo["orientation"]]
        ds.SliceLocation = _ds(position[2])
        ds.PixelSpacing = [_ds(v) for v in geo["pixel_spacing"]]
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds(geo["slice_step"])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        # rows follow the volume's second axis (P), columns its first (L): pixel [row, column] = voxel [c, r, k]
        plane = np.ascontiguousarray(pixels[:, :, k].T)
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "US"
        ds.WindowCenter = _ds((window_lo + window_hi) / 2)
        ds.WindowWidth = _ds(max(window_hi - window_lo, 1.0))
        ds.PixelData = plane.tobytes()
        datasets.append(ds)
    return datasets


def bids_volumes(folder: Path) -> Iterator[tuple[Path, str, str, str]]:
    """(path, subject, session, suffix) of every BIDS-named image directly in ``folder``."""
    for path in sorted(Path(folder).glob("*.nii*")):
        ref = parse_image_id(path.name)
        if ref is not None:
            yield path, ref.subject, ref.session, ref.suffix


def export_folder(folder: Path, namespace: str = DEFAULT_NAMESPACE, sequences: Iterable[str] | None = None
                  ) -> Iterator[tuple[Path, list[Dataset]]]:
    """Each BIDS image of a folder as a DICOM series (lazily: one series in memory at a time)."""
    wanted = set(sequences) if sequences is not None else None
    for path, subject, session, suffix in bids_volumes(folder):
        if wanted is None or suffix in wanted:
            yield path, series_datasets(nib.load(path), subject, session, suffix, namespace)


def write_series(datasets: list[Dataset], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = out_dir / f"{ds.SOPInstanceUID}.dcm"
        pydicom.dcmwrite(path, ds, write_like_original=False)
        paths.append(path)
    return paths


def dicomweb_client(url: str, auth: tuple | None = None, timeout: float = 60):
    """A dicomweb-client session with credentials (when given) and a timeout on every request, so an unreachable
    server is an error, not a hang."""
    import requests
    from dicomweb_client import DICOMwebClient

    session = requests.Session()
    if auth:
        session.auth = tuple(auth)
    original = session.request

    def request(method, url, **kwargs):
        kwargs.setdefault("timeout", timeout)
        return original(method, url, **kwargs)

    session.request = request
    client = DICOMwebClient(url=url, session=session)
    # dicomweb-client retries every failure, a refused connection included, 5 times with 2..16 s back-off (30 s per
    # call): keep a short retry for a busy server, and answer "unreachable" within a second
    client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=100)
    return client


def upload(client, datasets: list[Dataset], batch: int = 64) -> str:
    """STOW-RS a series in batches; returns its SeriesInstanceUID."""
    for start in range(0, len(datasets), batch):
        client.store_instances(datasets[start:start + batch])
    return str(datasets[0].SeriesInstanceUID)


def upload_folder(folder: Path, url: str, auth: tuple | None = None, namespace: str = DEFAULT_NAMESPACE,
                  sequences: Iterable[str] | None = None) -> dict[str, str]:
    """Upload every BIDS image of a folder to a DICOMweb server; returns {BIDS image id: SeriesInstanceUID}."""
    client = dicomweb_client(url, auth)
    uploaded = {}
    for path, datasets in export_folder(folder, namespace, sequences):
        image_id = path.name.split(".nii")[0]
        uploaded[image_id] = upload(client, datasets)
        logger.info("uploaded %s as series %s (%d slices)", image_id, uploaded[image_id], len(datasets))
    return uploaded


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Upload BIDS-named NIfTI studies to a DICOMweb server as MR series "
                                     "(and their saved labels as DICOM SEG).")
    parser.add_argument("--studies", required=True, help="folder of sub-<S>_ses-<T>_<suffix>.nii.gz images")
    parser.add_argument("--dicomweb", required=True, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    parser.add_argument("--user", default=None)
    parser.add_argument("--password", default=None)
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="UID namespace (same one, same UIDs)")
    parser.add_argument("--no-labels", action="store_true", help="do not upload labels/final as DICOM SEG")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    auth = (args.user, args.password) if args.user else None
    uploaded = upload_folder(Path(args.studies), args.dicomweb, auth, args.namespace)
    print(f"uploaded {len(uploaded)} series to {args.dicomweb}")
    if not args.no_labels:
        from .seg import upload_label_folder

        count = upload_label_folder(Path(args.studies), uploaded, args.dicomweb, auth)
        print(f"uploaded {count} labels as DICOM SEG")
    return 0


if __name__ == "__main__":
    sys.exit(main())
