"""Per-subject anatomy warps (affine + smooth elastic + mass effect) and per-session rigid head motion."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

#: Subject affine ranges: rotation (deg, per axis), translation (mm, per axis), scaling (fraction, per axis).
SUBJECT_MAX_ROTATION_DEG = 4.0
SUBJECT_MAX_SHIFT_MM = 4.0
SUBJECT_MAX_SCALE = 0.05
#: Elastic field: control-point spacing (mm) and RMS displacement (mm).
ELASTIC_CONTROL_MM = 24.0
ELASTIC_RMS_MM = 2.0
#: Session-to-previous-session rigid misregistration ranges.
SESSION_ROTATION_DEG = (1.0, 3.0)
SESSION_SHIFT_MM = (1.0, 3.0)
#: Dense coordinates are computed exactly every COARSE_STEP voxels and interpolated linearly in between.
COARSE_STEP = 4

# control grid box in subject mm, generously covering the MNI brain
_FIELD_LO = np.array([-110.0, -150.0, -90.0])
_FIELD_HI = np.array([110.0, 110.0, 130.0])


def rigid(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """4x4 homogeneous matrix from a 3x3 linear part and a translation."""
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = translation
    return out


def random_subject_affine(rng: np.random.Generator) -> np.ndarray:
    """Subject mm -> template mm: a few degrees, a few mm and a few percent of head-size variation."""
    angles = rng.uniform(-SUBJECT_MAX_ROTATION_DEG, SUBJECT_MAX_ROTATION_DEG, 3)
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    scale = np.diag(rng.uniform(1 - SUBJECT_MAX_SCALE, 1 + SUBJECT_MAX_SCALE, 3))
    shift = rng.uniform(-SUBJECT_MAX_SHIFT_MM, SUBJECT_MAX_SHIFT_MM, 3)
    return rigid(rot @ scale, shift)


def random_session_motion(rng: np.random.Generator) -> np.ndarray:
    """Rigid scanner-world change between consecutive sessions (1-3 degrees, 1-3 mm)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(*SESSION_ROTATION_DEG))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    shift = direction * rng.uniform(*SESSION_SHIFT_MM)
    return rigid(Rotation.from_rotvec(axis * angle).as_matrix(), shift)


@dataclass(frozen=True)
class MassEffect:
    """Radial expansion of the tissue around a mass (a glioma): subject points sample closer to the centre."""

    centre: np.ndarray  # subject mm
    sigma_mm: float
    amplitude: float  # < 1 keeps the map one-to-one

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """Displacement (N, 3) in subject mm to add before the subject affine."""
        rel = points - self.centre
        weight = np.exp(-np.sum(rel**2, axis=1) / (2 * self.sigma_mm**2))
        return -self.amplitude * weight[:, None] * rel


@dataclass(frozen=True)
class SubjectWarp:
    """Maps subject-space mm to template (MNI) mm: template = affine(x + mass(x)) + elastic(x)."""

    affine: np.ndarray
    control: np.ndarray  # (3, cx, cy, cz) cubic B-spline coefficients of the elastic displacement (mm)
    masses: tuple[MassEffect, ...] = field(default_factory=tuple)

    def with_masses(self, masses: tuple[MassEffect, ...]) -> SubjectWarp:
        """The same warp with mass effects added (they do not move the mass centres)."""
        return SubjectWarp(self.affine, self.control, tuple(self.masses) + tuple(masses))

    def elastic(self, points: np.ndarray) -> np.ndarray:
        """Elastic displacement (N, 3) in mm, cubic-spline interpolated between control points."""
        idx = ((points - _FIELD_LO) / ELASTIC_CONTROL_MM).T
        return np.stack([ndi.map_coordinates(c, idx, order=3, mode="nearest", prefilter=False)
                         for c in self.control], axis=1)

    def to_template(self, points: np.ndarray) -> np.ndarray:
        """Template mm (N, 3) of subject points (N, 3)."""
        moved = points.astype(float).copy()
        for mass in self.masses:
            moved += mass.displacement(points)
        return moved @ self.affine[:3, :3].T + self.affine[:3, 3] + self.elastic(points)

    def to_subject_linear(self, points_template: np.ndarray) -> np.ndarray:
        """Approximate inverse that ignores the elastic and mass parts (good to a few mm)."""
        inv = np.linalg.inv(self.affine)
        return points_template @ inv[:3, :3].T + inv[:3, 3]


def random_warp(rng: np.random.Generator) -> SubjectWarp:
    """A subject: random affine plus a smooth low-resolution displacement field."""
    affine = random_subject_affine(rng)
    shape = tuple(int(np.ceil((hi - lo) / ELASTIC_CONTROL_MM)) + 1 for lo, hi in zip(_FIELD_LO, _FIELD_HI, strict=True))
    raw = rng.normal(size=(3, *shape))
    smooth = np.stack([ndi.gaussian_filter(c, 0.7, mode="nearest") for c in raw])
    smooth *= ELASTIC_RMS_MM / max(float(np.sqrt(np.mean(smooth**2))), 1e-9)
    # store B-spline coefficients so that evaluations need no prefilter
    control = np.stack([ndi.spline_filter(c, order=3, mode="nearest") for c in smooth])
    return SubjectWarp(affine=affine, control=control)


def upsample_linear(coarse: np.ndarray, shape: tuple[int, ...], step: int) -> np.ndarray:
    """Separable linear interpolation from samples every `step` voxels to the full grid (fast, exact for
    linear maps)."""
    out = coarse
    for axis, n in enumerate(shape):
        pos = np.arange(n, dtype=np.float32) / step
        i0 = np.minimum(np.floor(pos).astype(np.intp), out.shape[axis] - 2)
        w = (pos - i0).astype(np.float32)
        bshape = [1] * out.ndim
        bshape[axis] = n
        w = w.reshape(bshape)
        a = np.take(out, i0, axis=axis)
        b = np.take(out, i0 + 1, axis=axis)
        b -= a  # in place: a + (b - a) * w without full-size temporaries
        b *= w
        b += a
        out = b
    return out.astype(np.float32, copy=False)


def coarse_points(shape: tuple[int, int, int], step: int = COARSE_STEP) -> tuple[np.ndarray, tuple[int, ...]]:
    """Voxel indices (N, 3) of the coarse lattice that upsample_linear expects, and its shape."""
    axes = [np.arange(0, n - 1 + step, step, dtype=float) if n > 1 else np.array([0.0, step]) for n in shape]
    axes = [a if len(a) >= 2 else np.array([0.0, step]) for a in axes]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return grid.reshape(-1, 3), grid.shape[:3]


def template_coordinates(warp: SubjectWarp, voxel_to_subject: np.ndarray, shape: tuple[int, int, int],
                         template_affine: np.ndarray) -> np.ndarray:
    """Template voxel coordinates (3, *shape) of every output voxel, for map_coordinates."""
    pts, cshape = coarse_points(shape)
    subject = pts @ voxel_to_subject[:3, :3].T + voxel_to_subject[:3, 3]
    tmpl = warp.to_template(subject)
    inv = np.linalg.inv(template_affine)
    tvox = (tmpl @ inv[:3, :3].T + inv[:3, 3]).astype(np.float32)
    coords = np.empty((3, *shape), dtype=np.float32)
    for a in range(3):
        coords[a] = upsample_linear(tvox[:, a].reshape(cshape), shape, COARSE_STEP)
    return coords


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], control: int, sd: float) -> np.ndarray:
    """A smooth random field on the output grid (e.g. a bias field), `control` points per axis."""
    ctrl = ndi.spline_filter(rng.normal(0.0, sd, size=(control,) * 3), order=3, mode="nearest")
    pts, cshape = coarse_points(shape)
    idx = (pts / np.maximum(np.array(shape) - 1, 1) * (control - 1)).T
    coarse = ndi.map_coordinates(ctrl, idx, order=3, mode="nearest", prefilter=False).reshape(cshape)
    return upsample_linear(coarse.astype(np.float32), shape, COARSE_STEP)
