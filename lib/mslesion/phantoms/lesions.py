"""Lesions as soft ovoids in subject space: placement by location class, shape, and their voxel footprints."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from .anatomy import Anatomy
from .contrasts import RING_CENTRE, RING_WIDTH
from .deformation import SubjectWarp

#: Tissue fraction (GM+WM) needed at a lesion centre, so that every lesion has a labelled core.
MIN_CENTRE_TISSUE = 0.6


@dataclass
class Blob:
    """One soft ellipsoid (optionally with an irregular, lobulated surface) painted into a session.

    Blobs are painted in list order: `levels` replace the signal (alpha blending by the partial-volume
    fraction), `gains` instead scale it (used for the oedema halo of active lesions).
    """

    kind: str
    location: str
    centre: np.ndarray  # subject mm
    axes: np.ndarray  # 3x3, columns are unit principal axes
    radii: np.ndarray  # mm along those axes
    levels: dict[str, float] = field(default_factory=dict)  # base sequence -> signal relative to WM
    gains: dict[str, float] | None = None
    edge_mm: float = 1.0  # width of the partial-volume ramp across the surface
    lobes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (amplitudes, directions, phases)
    texture: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (amplitudes mm, wavevectors, phases)
    carrier: str = "tissue"  # "tissue": GM+WM carry it; "white": mostly WM (vasogenic oedema)
    flair_label: int = 1  # 0 none, 1 lesion, 2 new lesion (painted only where no 1)
    ce_label: int = 0  # 1: enhancing lesion on post-contrast T1
    enhancement: float = 0.0  # amplitude relative to WM on T1w
    pattern: str | None = None  # "nodular" | "ring"
    record: dict | None = None  # reported metadata (None for helper blobs: halo, necrosis)

    @property
    def reach_mm(self) -> float:
        """Radius of a sphere that holds the blob and its soft edge."""
        lobe = 1.0 + (float(np.sum(np.abs(self.lobes[0]))) if self.lobes is not None else 0.0)
        rough = float(np.sum(np.abs(self.texture[0]))) if self.texture is not None else 0.0
        return float(np.max(self.radii)) * lobe + rough + 1.5 * self.edge_mm + 1.0


@dataclass
class Footprint:
    """A blob evaluated on a voxel grid, inside its bounding box only."""

    box: tuple[slice, slice, slice]
    weight: np.ndarray  # float32 partial-volume fraction (0..1) times the carrier tissue
    core: np.ndarray  # bool: the binary label core (inside the surface, on carrier tissue)
    enhancement: np.ndarray | None  # float32 fraction that enhances (nodular: all, ring: a shell)


def lobes(rng: np.random.Generator, amplitude: float, n: int = 6,
          frequency: tuple[float, float] = (1.0, 3.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random modulation of the radius with the direction: an irregular, lobulated surface."""
    amps = rng.dirichlet(np.ones(n)) * amplitude
    dirs = rng.normal(size=(n, 3))
    dirs *= (rng.uniform(*frequency, n) / np.linalg.norm(dirs, axis=1))[:, None]
    phases = rng.uniform(0, 2 * np.pi, n)
    return amps, dirs, phases


def texture(rng: np.random.Generator, amplitude_mm: float, wavelength_mm: tuple[float, float],
            n: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random smooth 3-D field (sum of plane waves, fixed in subject space) that roughens a surface."""
    amps = rng.dirichlet(np.ones(n)) * amplitude_mm
    dirs = rng.normal(size=(n, 3))
    dirs *= (2 * np.pi / rng.uniform(*wavelength_mm, n) / np.linalg.norm(dirs, axis=1))[:, None]
    return amps, dirs, rng.uniform(0, 2 * np.pi, n)


def footprint(blob: Blob, voxel_to_subject: np.ndarray, shape: tuple[int, int, int],
              gm: np.ndarray, wm: np.ndarray) -> Footprint | None:
    """Partial-volume fraction, label core and enhancement of a blob on the synthesis grid."""
    to_voxel = np.linalg.inv(voxel_to_subject)
    centre_vox = to_voxel[:3, :3] @ blob.centre + to_voxel[:3, 3]
    spacing = np.linalg.norm(voxel_to_subject[:3, :3], axis=0)
    half = blob.reach_mm / spacing
    lo = np.maximum(np.floor(centre_vox - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre_vox + half).astype(int) + 1, np.array(shape))
    if np.any(hi <= lo):
        return None
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    axes_idx = [np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi, strict=True)]
    m = voxel_to_subject[:3, :3].T @ blob.axes  # m[d, k]: voxel step along d -> local axis k (mm)
    offset = (voxel_to_subject[:3, 3] - blob.centre) @ blob.axes
    local = [np.float32(offset[k]) + sum(np.float32(m[d, k]) * _along(axes_idx[d], d) for d in range(3))
             for k in range(3)]
    u = [local[k] / np.float32(blob.radii[k]) for k in range(3)]
    r = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
    if blob.lobes is not None:
        amps, dirs, phases = blob.lobes
        safe = np.maximum(r, np.float32(1e-6))
        mod = np.ones_like(r)
        for a, w, p in zip(amps, dirs, phases, strict=True):
            mod += np.float32(a) * np.cos((u[0] * w[0] + u[1] * w[1] + u[2] * w[2]) / safe + np.float32(p))
        r = r / np.maximum(mod, np.float32(0.2))
    mean_radius = np.float32(np.exp(np.mean(np.log(blob.radii))))
    distance = (r - 1) * mean_radius  # ~signed distance to the surface, mm
    if blob.texture is not None:  # infiltrative margin: the surface wanders by a few mm
        amps, waves, phases = blob.texture
        lin, shift = voxel_to_subject[:3, :3], voxel_to_subject[:3, 3] - blob.centre
        rel = [np.float32(shift[a]) + sum(np.float32(lin[a, d]) * _along(axes_idx[d], d) for d in range(3))
               for a in range(3)]  # subject mm relative to the centre
        for a, w, p in zip(amps, waves, phases, strict=True):
            distance = distance - np.float32(a) * np.cos(rel[0] * np.float32(w[0]) + rel[1] * np.float32(w[1])
                                                         + rel[2] * np.float32(w[2]) + np.float32(p))
    frac = np.clip(0.5 - distance / np.float32(blob.edge_mm), 0, 1)
    g, w = gm[box], wm[box]
    carrier = np.clip(g + w, 0, 1) if blob.carrier == "tissue" else np.clip(w + 0.3 * g, 0, 1)
    weight = (frac * carrier).astype(np.float32)
    core = (r <= 1) & (carrier >= 0.5)
    enh = None
    if blob.enhancement > 0:
        enh = frac if blob.pattern != "ring" else frac * np.exp(-(((r - RING_CENTRE) / RING_WIDTH) ** 2))
        enh = (enh * carrier).astype(np.float32)
    return Footprint(box=box, weight=weight, core=core, enhancement=enh)


def _along(values: np.ndarray, axis: int) -> np.ndarray:
    """A 1-D array shaped to broadcast along one of three axes."""
    shape = [1, 1, 1]
    shape[axis] = len(values)
    return values.reshape(shape)


def orthonormal_axes(rng: np.random.Generator, long_axis: np.ndarray | None = None) -> np.ndarray:
    """Principal axes (columns): random, or with the first one along `long_axis`."""
    if long_axis is None:
        return Rotation.random(random_state=rng).as_matrix()
    a = long_axis / np.linalg.norm(long_axis)
    helper = rng.normal(size=3)
    b = helper - a * (helper @ a)
    b /= np.linalg.norm(b)
    return np.stack([a, b, np.cross(a, b)], axis=1)


def ellipsoid_radii(rng: np.random.Generator, volume_ml: float, elongation: float) -> np.ndarray:
    """Radii (long first) of an ellipsoid of the given volume and long/short axis ratio."""
    flat = rng.uniform(0.8, 1.0)
    short = (3 * volume_ml * 1000 / (4 * np.pi * elongation * flat)) ** (1 / 3)
    return np.array([short * elongation, short, short * flat])


def clear_of(centre: np.ndarray, reach: float, others: list[Blob], gap_mm: float) -> bool:
    """Whether a new blob of this reach keeps `gap_mm` of clearance from every other blob."""
    return all(np.linalg.norm(centre - o.centre) >= reach + float(np.max(o.radii)) + gap_mm for o in others)


def place(rng: np.random.Generator, anat: Anatomy, warp: SubjectWarp, region: str,
          accept=None, tries: int = 8, batch: int = 48) -> np.ndarray | None:
    """A subject-space point whose template location lies in `region` on tissue (None if none found).

    Candidate template voxels of the region are pulled back through the subject warp (two Newton-like
    steps on the linear part), then checked exactly through the forward warp.
    """
    cands = anat.regions[region]
    inv_lin = np.linalg.inv(warp.affine[:3, :3])
    for _ in range(tries):
        pick = cands[rng.integers(0, len(cands), batch)].astype(float) + rng.uniform(-0.5, 0.5, (batch, 3))
        target = pick @ anat.affine[:3, :3].T + anat.affine[:3, 3]
        subj = warp.to_subject_linear(target)
        for _ in range(3):
            subj -= (warp.to_template(subj) - target) @ inv_lin.T
        tmpl = warp.to_template(subj)
        ok = (anat.region_of(tmpl) == region)
        ok &= anat.sample("gm", tmpl) + anat.sample("wm", tmpl) >= MIN_CENTRE_TISSUE
        for i in np.flatnonzero(ok):
            if accept is None or accept(subj[i]):
                return subj[i]
    return None


def tissue_at(anat: Anatomy, warp: SubjectWarp, point: np.ndarray) -> float:
    """GM+WM fraction of the (warped) template at a subject point."""
    tmpl = warp.to_template(point[None, :])
    return float(anat.sample("gm", tmpl)[0] + anat.sample("wm", tmpl)[0])
