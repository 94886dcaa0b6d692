"""Real anatomy for the phantoms: the MNI152 2009 template and tissue maps that ship inside nilearn."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: Location classes used to place lesions (template-space candidate centres).
REGIONS = ("periventricular", "juxtacortical", "deep_wm", "infratentorial", "basal_ganglia")

#: Below this MNI z (mm), and posterior to INFRATENTORIAL_Y_MM, tissue counts as brainstem/cerebellum.
INFRATENTORIAL_Z_MM = -20.0
INFRATENTORIAL_Y_MM = -22.0
#: How far (voxels = mm) the deep ventricle seeds are grown back into connected CSF.
VENTRICLE_GROWTH_MM = 6


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Template tissue fractions and lesion-placement regions, all on the 1 mm MNI grid."""

    affine: np.ndarray  # template voxel -> MNI mm
    gm: np.ndarray  # float32 fractions
    wm: np.ndarray
    csf: np.ndarray
    ventricle_distance: np.ndarray  # mm from the lateral ventricles (float32)
    depth: np.ndarray  # mm from the brain surface (float32)
    regions: dict[str, np.ndarray]  # region -> (N, 3) template voxel indices of candidate centres
    tissue_box: tuple[slice, slice, slice]  # bounding box of all tissue: nothing to resample outside

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape of every template map."""
        return self.gm.shape  # type: ignore[return-value]

    def voxels(self, points_mm: np.ndarray) -> np.ndarray:
        """Template voxel coordinates (N, 3) of MNI points (N, 3), for lookups."""
        inv = np.linalg.inv(self.affine)
        return points_mm @ inv[:3, :3].T + inv[:3, 3]

    def sample(self, name: str, points_mm: np.ndarray, order: int = 1) -> np.ndarray:
        """Value of a template map at MNI points, zero outside the grid."""
        data = getattr(self, name)
        return ndi.map_coordinates(data, self.voxels(points_mm).T, order=order, mode="constant", cval=0.0)

    def region_of(self, points_mm: np.ndarray) -> np.ndarray:
        """Region name per MNI point ('' where none), by nearest template voxel."""
        ijk = np.rint(self.voxels(points_mm)).astype(int)
        inside = np.all((ijk >= 0) & (ijk < np.array(self.shape)), axis=1)
        out = np.full(len(points_mm), "", dtype=object)
        codes = _region_codes(self)
        hit = codes[tuple(ijk[inside].T)]
        names = np.array(("",) + REGIONS, dtype=object)
        out[inside] = names[hit]
        return out

    def outward(self, points_mm: np.ndarray) -> np.ndarray:
        """Unit directions (N, 3) away from the ventricles, to orient periventricular ovoids."""
        eps = 1.5
        grads = np.zeros_like(points_mm, dtype=float)
        for axis in range(3):
            step = np.zeros(3)
            step[axis] = eps
            grads[:, axis] = (self.sample("ventricle_distance", points_mm + step)
                              - self.sample("ventricle_distance", points_mm - step))
        norm = np.linalg.norm(grads, axis=1, keepdims=True)
        return np.where(norm > 1e-6, grads / np.maximum(norm, 1e-6), np.array([0.0, 0.0, 1.0]))


@functools.lru_cache(maxsize=4)
def _region_codes(anat: Anatomy) -> np.ndarray:
    """Dense uint8 region code map (index into REGIONS, +1) for point lookups."""
    codes = np.zeros(anat.shape, dtype=np.uint8)
    for code, name in enumerate(REGIONS, start=1):
        codes[tuple(anat.regions[name].T)] = code
    return codes


def _load_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Affine, GM, WM and brain mask from nilearn's bundled files (no download)."""
    from nilearn import datasets

    def c_order(img) -> np.ndarray:
        # NIfTI data come Fortran-ordered; C order makes the per-voxel resampling ~4x faster
        return np.ascontiguousarray(img.get_fdata(dtype=np.float32))

    template = datasets.load_mni152_template(resolution=1)
    gm = c_order(datasets.load_mni152_gm_template(resolution=1))
    wm = c_order(datasets.load_mni152_wm_template(resolution=1))
    mask = c_order(datasets.load_mni152_brain_mask(resolution=1))
    return np.asarray(template.affine, dtype=float), gm, wm, mask


def _lateral_ventricles(csf: np.ndarray, depth: np.ndarray, xmm: np.ndarray, zmm: np.ndarray) -> np.ndarray:
    """Large CSF bodies deep in the supratentorial brain, grown back to their full extent."""
    seeds = (csf > 0.5) & (depth > 12.0)
    labels, n = ndi.label(seeds)
    if n == 0:
        raise RuntimeError("no ventricles found in the template")
    idx = np.arange(1, n + 1)
    sizes = ndi.sum(seeds, labels, idx)
    zc = ndi.mean(zmm, labels, idx)
    xc = ndi.mean(np.abs(xmm), labels, idx)
    # bilateral bodies only: the midline components are the interhemispheric fissure and cisterns
    keep = idx[(sizes >= 2000) & (zc > -10.0) & (xc > 6.0)]
    core = np.isin(labels, keep)
    # grow a few mm into the connected CSF so the horns are included, without reaching the fissures
    allowed = (csf > 0.4) & (depth > 8.0) & (zmm > -15.0) & (np.abs(xmm) > 1.5)
    return ndi.binary_dilation(core, iterations=VENTRICLE_GROWTH_MM, mask=allowed) | core


@functools.lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
    """Load and derive the template anatomy once per process (a few seconds)."""
    affine, gm, wm, mask = _load_maps()
    gm = np.clip(gm, 0.0, 1.0) * (mask > 0)
    wm = np.clip(wm, 0.0, 1.0) * (mask > 0)
    csf = np.clip(mask - gm - wm, 0.0, 1.0).astype(np.float32)
    brain = mask > 0
    # chamfer distances are plenty for the rough depth classes; the ventricle distance below is exact
    depth = ndi.distance_transform_cdt(brain, metric="taxicab").astype(np.float32) / np.sqrt(2.0)

    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in gm.shape), indexing="ij", sparse=True)
    xmm = affine[0, 0] * ii + affine[0, 3]
    ymm = affine[1, 1] * jj + affine[1, 3]
    zmm = affine[2, 2] * kk + affine[2, 3]
    xmm, ymm, zmm = np.broadcast_arrays(xmm, ymm, zmm)

    ventricles = _lateral_ventricles(csf, depth, xmm, zmm)
    box = ndi.find_objects(brain.astype(np.uint8))[0]  # distances only matter inside the brain
    vdist = np.full(gm.shape, 999.0, dtype=np.float32)
    vdist[box] = ndi.distance_transform_edt(~ventricles[box])
    gm_dist = ndi.distance_transform_cdt(gm < 0.5, metric="taxicab").astype(np.float32) / np.sqrt(2.0)

    infra = (zmm < INFRATENTORIAL_Z_MM) & (ymm < INFRATENTORIAL_Y_MM) & ((np.abs(xmm) < 16) | (ymm < -40))
    supra = ~infra & (zmm > -25)
    white = wm > 0.5
    regions_mask = {
        "periventricular": white & (vdist >= 1.5) & (vdist <= 7.0) & supra,
        "juxtacortical": white & (gm_dist <= 2.0) & (vdist > 12.0) & supra & (depth > 4.0),
        "deep_wm": (wm > 0.8) & (gm_dist > 4.0) & (vdist > 9.0) & supra,
        "infratentorial": white & infra & (depth > 3.0),
        "basal_ganglia": (gm > 0.5) & (np.abs(xmm) >= 8) & (np.abs(xmm) <= 32) & (ymm >= -25) & (ymm <= 22)
        & (zmm >= -8) & (zmm <= 18) & (depth > 20.0),
    }
    regions = {name: np.argwhere(m).astype(np.int16) for name, m in regions_mask.items()}
    gm, wm = gm.astype(np.float32, copy=False), wm.astype(np.float32, copy=False)
    for arr in (gm, wm, csf, vdist, depth):
        arr.setflags(write=False)  # shared by every subject of the process
    tissue_box = ndi.find_objects(((gm + wm + csf) > 0).astype(np.uint8))[0]
    return Anatomy(affine=affine, gm=gm, wm=wm, csf=csf, ventricle_distance=vdist, depth=depth, regions=regions,
                   tissue_box=tissue_box)


#: Depth (mm below the brain surface) beyond which grey matter counts as deep grey nuclei.
DEEP_GM_DEPTH_MM = 15.0


@functools.lru_cache(maxsize=1)
def head_maps() -> dict[str, np.ndarray]:
    """Template maps for whole-head phantoms and randomised contrast: mm outside the brain mask (0 inside), mm from
    the nearer eye centre, and the deep grey matter fraction. Computed once per process, only when asked for."""
    from .randomise import EYE_CENTRES_MM

    anat = load_anatomy()
    brain = (anat.gm + anat.wm + anat.csf) > 0.5
    outside = ndi.distance_transform_edt(~brain).astype(np.float32)
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in anat.shape), indexing="ij", sparse=True)
    a = anat.affine
    xyz = (a[0, 0] * ii + a[0, 3], a[1, 1] * jj + a[1, 3], a[2, 2] * kk + a[2, 3])
    eye = np.full(anat.shape, 999.0, dtype=np.float32)
    for centre in EYE_CENTRES_MM:
        dist = np.sqrt(sum((x - c) ** 2 for x, c in zip(xyz, centre, strict=True))).astype(np.float32)
        eye = np.minimum(eye, dist)
    deep_gm = (anat.gm * (anat.depth > DEEP_GM_DEPTH_MM)).astype(np.float32)
    x, y, z = np.broadcast_arrays(*xyz)
    # normal structures that enhance on post-contrast T1 and fool a naive model (fractions 0..1):
    # the choroid plexus in the atria of the lateral ventricles, the superior sagittal and transverse sinuses
    atrium = (anat.ventricle_distance < 0.5) & (y > -48) & (y < -18) & (z > 0) & (z < 24)
    choroid = ndi.gaussian_filter(atrium.astype(np.float32), 1.0)
    shell = (outside > 0.5) & (outside < 4.0)
    sinus = shell & (((np.abs(x) < 4.0) & (z > -10)) | ((y < -70) & (z > -30) & (z < 0)))
    sinus = ndi.gaussian_filter(sinus.astype(np.float32), 0.8)
    maps = {"outside": outside, "eye": eye, "deep_gm": deep_gm, "choroid": np.clip(choroid * 2, 0, 1),
            "sinus": np.clip(sinus * 1.5, 0, 1), "surface": ((outside < 2.5) & (anat.depth < 2.5)).astype(np.float32)}
    for arr in maps.values():
        arr.setflags(write=False)
    return maps
