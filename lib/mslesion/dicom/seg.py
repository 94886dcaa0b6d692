"""Labels as DICOM Segmentation objects (binary SEG) on their source series' grid, and back.

Written here with pydicom: MONAI Label's own converter needs dcmqi's ``itkimage2segimage`` (downloaded at run time)
or pydicom-seg, which refuses an empty label (a correction that removes every lesion must still be saved).

A label volume is laid out like the series it was converted from (axis 0 the columns, axis 1 the rows, axis 2
the slices in position order: what SimpleITK writes). Every segment gets one frame per slice, empty or not, each
frame referencing its source instance by position; the SEG lists the source series in ReferencedSeriesSequence,
so it is found again from the image it labels.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixel_data_handlers.numpy_handler import pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ..answers import write_nifti_label
from ..studies import StudyError
from ..vocabulary import VOCABULARY

logger = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: What each label value of each sequence's label means: the segment names of mslesion.vocabulary.
SEGMENTS = {suffix: {value: name for name, value in names.items()} for suffix, names in VOCABULARY.items()}
COLOURS_LAB = {1: (54534, 54054, 7164), 2: (65535, 32896, 32896)}  # DICOM-scaled CIELab (yellow, red)
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _code(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def lps_affine(image: nib.Nifti1Image) -> np.ndarray:
    return RAS_TO_LPS @ image.affine


def _position(ds) -> np.ndarray:
    return np.array([float(v) for v in ds.ImagePositionPatient])


def segment_names(sequence: str | None, values: Iterable[int]) -> dict[int, str]:
    known = SEGMENTS.get(sequence or "", {})
    return {v: known.get(v, f"Label {v}") for v in sorted({int(v) for v in values if v > 0} | {1})}


def _seg_dataset(first: Dataset, shape: tuple, description: str) -> Dataset:
    """The SEG's file meta; its source's patient, study and frame of reference; its series and image attributes."""
    now = datetime.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SEGMENTATION_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = SEGMENTATION_STORAGE, ds.file_meta.MediaStorageSOPInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
                    "FrameOfReferenceUID"):
        setattr(ds, keyword, getattr(first, keyword, ""))
    ds.PositionReferenceIndicator = ""
    ds.Modality = "SEG"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 300
    ds.SeriesDescription = description
    ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S.%f")
    ds.InstanceNumber = 1
    ds.Manufacturer = "msapp"
    ds.ManufacturerModelName = "msapp MONAI Label app"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "msapp"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ContentLabel = "LESIONS"
    ds.ContentDescription = description
    ds.ContentCreatorName = "msapp"
    ds.SegmentationType = "BINARY"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(shape[1]), int(shape[0])
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    return ds


def _segment_sequence(names: dict[int, str], algorithm: str) -> Sequence:
    """One segment per label value, named from the vocabulary."""
    segments = []
    for number, name in names.items():
        segment = Dataset()
        segment.SegmentNumber = number
        segment.SegmentLabel = name
        segment.SegmentAlgorithmType = algorithm
        segment.SegmentAlgorithmName = "msapp"
        category = _code("49755003", "Morphologically Altered Structure")
        segment.SegmentedPropertyCategoryCodeSequence = Sequence([category])
        segment.SegmentedPropertyTypeCodeSequence = Sequence([_code("52988006", "Lesion")])
        segment.RecommendedDisplayCIELabValue = list(COLOURS_LAB.get(number, (65535, 32896, 32896)))
        segments.append(segment)
    return Sequence(segments)


def _dimension_index(ds: Dataset) -> None:
    """Frames indexed by segment number, then position."""
    dimension_uid = generate_uid()
    dims = []
    for pointer, group in ((0x0062000B, 0x0062000A), (0x00200032, 0x00209113)):
        item = Dataset()
        item.DimensionOrganizationUID = dimension_uid
        item.DimensionIndexPointer, item.FunctionalGroupPointer = pointer, group
        dims.append(item)
    organisation = Dataset()
    organisation.DimensionOrganizationUID = dimension_uid
    ds.DimensionOrganizationSequence = Sequence([organisation])
    ds.DimensionIndexSequence = Sequence(dims)


def _shared_groups(row_spacing: float, column_spacing: float, slice_step: float, orientation: list) -> Sequence:
    """Spacing and orientation, the same for every frame."""
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [f"{row_spacing:.6g}", f"{column_spacing:.6g}"]
    measures.SliceThickness = measures.SpacingBetweenSlices = f"{slice_step:.6g}"
    shared.PixelMeasuresSequence = Sequence([measures])
    plane = Dataset()
    plane.ImageOrientationPatient = [f"{v:.6g}" for v in orientation]
    shared.PlaneOrientationSequence = Sequence([plane])
    return Sequence([shared])


def _frame_group(source: Dataset, number: int, k: int, position: np.ndarray) -> Dataset:
    """Frame ``k`` of segment ``number``: its source instance, index and position."""
    group = Dataset()
    derivation = Dataset()
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = Sequence([_code("121322", "Source image for image processing "
                                                               "operation", "DCM")])
    derivation.SourceImageSequence = Sequence([reference])
    derivation.DerivationCodeSequence = Sequence([_code("113076", "Segmentation", "DCM")])
    group.DerivationImageSequence = Sequence([derivation])
    content = Dataset()
    content.DimensionIndexValues = [number, k + 1]
    group.FrameContentSequence = Sequence([content])
    position_item = Dataset()
    position_item.ImagePositionPatient = [f"{v:.6g}" for v in position[:3]]
    group.PlanePositionSequence = Sequence([position_item])
    identification = Dataset()
    identification.ReferencedSegmentNumber = number
    group.SegmentIdentificationSequence = Sequence([identification])
    return group


def _referenced_series(first: Dataset, sources: list) -> Sequence:
    """The source series and every instance of it."""
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = first.SeriesInstanceUID
    instances = []
    for source in sources:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
        instances.append(item)
    referenced_series.ReferencedInstanceSequence = Sequence(instances)
    return Sequence([referenced_series])


def label_to_seg(label: np.ndarray, affine_lps: np.ndarray, sources: list, names: dict[int, str],
                 algorithm: str = "SEMIAUTOMATIC", description: str = "MS lesions (msapp)") -> Dataset:
    """A binary DICOM SEG of ``label`` (voxels laid out like the source series) referencing ``sources``.

    ``sources`` are the series' instances (pydicom Datasets, pixels not needed); the SEG joins their patient,
    study and frame of reference.
    """
    if label.ndim != 3:
        raise StudyError(422, f"A label must be a 3D volume to become a DICOM SEG; it has shape {label.shape}.")
    first = sources[0]
    normal = np.cross(affine_lps[:3, 0], affine_lps[:3, 1])
    by_depth = sorted(sources, key=lambda s: float(_position(s) @ normal))
    depths = np.array([float(_position(s) @ normal) for s in by_depth])
    row_spacing, column_spacing = (float(np.linalg.norm(affine_lps[:3, a])) for a in (1, 0))
    slice_step = float(np.linalg.norm(affine_lps[:3, 2]))
    orientation = [*(affine_lps[:3, 0] / column_spacing), *(affine_lps[:3, 1] / row_spacing)]

    ds = _seg_dataset(first, label.shape, description)
    ds.SegmentSequence = _segment_sequence(names, algorithm)
    _dimension_index(ds)
    ds.SharedFunctionalGroupsSequence = _shared_groups(row_spacing, column_spacing, slice_step, orientation)

    frames, per_frame = [], []
    for number in names:
        mask = label == number
        for k in range(label.shape[2]):
            position = affine_lps @ np.array([0.0, 0.0, float(k), 1.0])
            nearest = int(np.argmin(np.abs(depths - float(position[:3] @ normal))))
            per_frame.append(_frame_group(by_depth[nearest], number, k, position))
            frames.append(mask[:, :, k].T)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(frames)
    ds.PixelData = pack_bits(np.stack(frames).astype(np.uint8))
    ds.ReferencedSeriesSequence = _referenced_series(first, sources)
    return ds


def referenced_series(seg: Dataset) -> str | None:
    items = getattr(seg, "ReferencedSeriesSequence", None) or []
    return str(items[0].SeriesInstanceUID) if items else None


def seg_to_label(seg: Dataset, affine_lps: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The label volume (segment numbers; a higher number wins an overlap) on a grid given by its LPS affine."""
    frames = seg.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    label = np.zeros(shape, dtype=np.uint8)
    inverse = np.linalg.inv(affine_lps)
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else Dataset()
    for index, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int((group.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence)[0]
                     .ReferencedSegmentNumber)
        orientation = (group.get("PlaneOrientationSequence") or shared.PlaneOrientationSequence)[0]
        iop = np.array([float(v) for v in orientation.ImageOrientationPatient])
        axes = affine_lps[:3, :2] / np.linalg.norm(affine_lps[:3, :2], axis=0)
        if abs(iop[:3] @ axes[:, 0]) < 0.99 or abs(iop[3:] @ axes[:, 1]) < 0.99:
            raise StudyError(422, "The DICOM SEG's planes are not those of its source series; it cannot be read "
                             "onto the image's grid.")
        position = np.array([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient])
        i0, j0, k = np.rint(inverse @ np.append(position, 1.0))[:3].astype(int)
        if not 0 <= k < shape[2]:
            continue
        mask = frames[index].T > 0
        columns, rows = min(mask.shape[0], shape[0] - i0), min(mask.shape[1], shape[1] - j0)
        target = label[i0:i0 + columns, j0:j0 + rows, k]
        target[mask[:columns, :rows]] = np.maximum(target[mask[:columns, :rows]], number)
    return label


def write_label_nifti(label: np.ndarray, like: nib.Nifti1Image, dest: Path) -> Path:
    """``label`` as a NIfTI on ``like``'s grid, written as infer answers are (gzip when ``dest`` ends in .gz)."""
    write_nifti_label(label, like.affine, str(dest), compress=str(dest).endswith(".gz"), compresslevel=1)
    return Path(dest)


def upload_label_folder(studies: Path, uploaded: dict[str, str], url: str, auth=None) -> int:
    """Upload ``labels/final`` of a BIDS folder as SEGs of the series ``uploaded`` maps the images to."""
    from ..studies import parse_image_id
    from .export import dicomweb_client, to_lps
    from .series import retrieve_instances

    client = dicomweb_client(url, auth)
    count = 0
    for path in sorted((Path(studies) / "labels" / "final").glob("*.nii*")):
        image_id = path.name.split(".nii")[0]
        ref = parse_image_id(image_id)
        if ref is None or image_id not in uploaded:
            continue
        data, affine = to_lps(nib.load(path))  # the exporter wrote the series in LPS order too
        sources = [pydicom.Dataset(s) for s in retrieve_instances(client, uploaded[image_id])]
        seg = label_to_seg(np.asarray(data), affine, sources, segment_names(ref.suffix, np.unique(data).tolist()),
                           algorithm="MANUAL", description="MS lesions (phantom truth)")
        client.store_instances([seg])
        count += 1
    return count
