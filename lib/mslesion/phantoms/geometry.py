"""Output grids: the RAS synthesis grid, thick-slice averaging and reorientation of the written arrays."""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

from .options import PhantomOptions


@dataclass(frozen=True)
class Grid:
    """Where a session is synthesised: a RAS grid in the session's scanner world (mm).

    With thick slices the synthesis grid is `slab` times finer along the axial axis and every `slab`
    consecutive slices are averaged into one written slice.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray  # synthesis voxel -> scanner world mm (RAS, diagonal)
    slab: int
    orientation: str
    axis: int = 2  # RAS axis the thick slices stack along (2 axial, 0 sagittal, 1 coronal)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Synthesis voxel size in mm."""
        return tuple(float(v) for v in np.abs(np.diag(self.affine)[:3]))  # type: ignore[return-value]

    @property
    def voxel_ml(self) -> float:
        """Volume of one synthesis voxel in mL."""
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def written_affine(self) -> np.ndarray:
        """RAS affine of the written (thickened) grid: slice j is the mean of synthesis slices slab*j.."""
        thick = np.eye(4)
        thick[self.axis, self.axis] = float(self.slab)
        thick[self.axis, 3] = (self.slab - 1) / 2.0
        return self.affine @ thick

    def world_to_voxel(self) -> np.ndarray:
        """Inverse of the synthesis affine."""
        return np.linalg.inv(self.affine)


def make_grid(template_affine: np.ndarray, template_shape: tuple[int, int, int], options: PhantomOptions) -> Grid:
    """The template's field of view, centred, at the requested spacing and slice thickness."""
    corners = np.array([template_affine[:3, :3] @ np.array(c) + template_affine[:3, 3]
                        for c in ((0, 0, 0), tuple(n - 1 for n in template_shape))])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    centre, extent = (lo + hi) / 2, hi - lo
    spacing = np.array(options.spacing, dtype=float)
    axis = "RAS".index(options.slice_axis)
    slab = 1
    if options.slice_thickness is not None:
        slab = max(1, int(round(options.slice_thickness / spacing[axis])))
        spacing[axis] = options.slice_thickness / slab
    written = spacing.copy()
    written[axis] *= slab
    n_written = np.floor(extent / written + 1e-6).astype(int) + 1
    shape = [int(n) for n in n_written]
    shape[axis] *= slab
    origin = centre - (n_written - 1) / 2 * written
    origin[axis] -= (slab - 1) / 2 * spacing[axis]
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return Grid(shape=tuple(shape), affine=affine, slab=slab, orientation=options.orientation.upper(), axis=axis)


def _grouped(data: np.ndarray, slab: int, axis: int) -> np.ndarray:
    """The volume with the slab's synthesis slices on a last axis of length ``slab`` (the thick-slice axis last)."""
    moved = np.moveaxis(data, axis, -1)
    return moved.reshape(*moved.shape[:2], moved.shape[2] // slab, slab)


def thicken(data: np.ndarray, slab: int, axis: int = 2) -> np.ndarray:
    """Average every `slab` slices along `axis` (the through-plane slice profile of a thick acquisition)."""
    if slab == 1:
        return data
    return np.moveaxis(_grouped(data, slab, axis).mean(axis=3, dtype=np.float32), -1, axis)


def thicken_label(label: np.ndarray, slab: int, axis: int = 2) -> np.ndarray:
    """A voxel of a thick slice is lesion where lesion covers at least half of it; 2 if mostly new."""
    if slab == 1:
        return label
    grouped = _grouped(label, slab, axis)
    any_lesion = (grouped > 0).mean(axis=3) >= 0.5
    new = (grouped == 2).sum(axis=3) > (grouped == 1).sum(axis=3)
    return np.moveaxis(np.where(any_lesion, np.where(new, 2, 1), 0).astype(np.uint8), -1, axis)


def to_image(data: np.ndarray, grid: Grid, stored_dtype: type | None = None) -> nib.Nifti1Image:
    """A NIfTI image of written-grid RAS data, reoriented to the requested axis codes (world unchanged).

    With ``stored_dtype`` (an integer type) float data are written as those integers with the scale slope and
    intercept nibabel picks, as many scanners store them."""
    img = nib.Nifti1Image(data, grid.written_affine)
    if grid.orientation != "RAS":
        ornt = nio.ornt_transform(nio.axcodes2ornt(tuple("RAS")), nio.axcodes2ornt(tuple(grid.orientation)))
        img = img.as_reoriented(ornt)
    affine = img.affine
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(stored_dtype or data.dtype)
    return img
