"""Public constants and options of the phantom generator."""

from __future__ import annotations

from dataclasses import dataclass

from ..vocabulary import SEQUENCES, VOCABULARY

COHORTS: tuple[str, ...] = ("ms", "glioma", "leukoencephalopathy", "small_vessel", "glioma_change", "metastasis",
                             "healthy", "ms_active", "ms_relapse")
#: Suffixes whose images carry a label (FLAIR: 1 lesion / 2 new lesion; ce-T1w: 1 enhancing lesion).
LABELLED_SEQUENCES: tuple[str, ...] = tuple(VOCABULARY)
#: World axes thick slices can be stacked along (axial, sagittal, coronal), as indices of RAS.
SLICE_AXES: tuple[str, ...] = ("S", "R", "A")
#: How the written images store their values.
STORAGES: tuple[str, ...] = ("int16", "float32", "scaled_uint16")


@dataclass(frozen=True)
class PhantomOptions:
    """How the synthetic studies are acquired; the anatomy and lesions do not depend on these."""

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # output voxel size (mm) before slice thickening
    slice_thickness: float | None = None  # e.g. 3.0 -> thick axial slices (through-plane averaged)
    orientation: str = "RAS"  # axis codes of the written arrays, e.g. "LPS", "PSR"
    sequences: tuple[str, ...] = SEQUENCES
    slice_axis: str = "S"  # world axis of thick slices: "S" axial, "R" sagittal, "A" coronal
    storage: str = "int16"  # "int16" (no scaling), "float32", or "scaled_uint16" (integers with scl_slope/inter)
    whole_head: bool = False  # skull, marrow, scalp fat, skin and eyes around the brain (not skull-stripped)
    randomised: bool = False  # domain randomisation of contrast, bias, noise and lesion intensity (randomise.py)
    site: str | None = None  # a named site's fixed appearance (randomise.SITES), e.g. for the new-site benchmark

    def __post_init__(self) -> None:
        """Reject options that would silently produce something else than asked."""
        unknown = [s for s in self.sequences if s not in SEQUENCES]
        if unknown or not self.sequences:
            raise ValueError(f"sequences must be a non-empty subset of {SEQUENCES}, got {self.sequences}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be three positive sizes in mm, got {self.spacing}")
        if self.slice_thickness is not None and self.slice_thickness <= 0:
            raise ValueError(f"slice_thickness must be positive, got {self.slice_thickness}")
        if self.slice_axis not in SLICE_AXES:
            raise ValueError(f"slice_axis must be one of {SLICE_AXES}, got {self.slice_axis!r}")
        if self.storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {self.storage!r}")
        codes = self.orientation.upper()
        pairs = ("LR", "AP", "SI")
        used = sorted(i for c in codes for i, p in enumerate(pairs) if c in p)
        if len(codes) != 3 or used != [0, 1, 2]:
            raise ValueError(f"orientation must be three axis codes like 'RAS' or 'LPS', got {self.orientation!r}")
