"""Rendering one session: warp the anatomy, paint the pathology, acquire every sequence, build labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .anatomy import Anatomy, head_maps
from .cohorts import SessionPathology
from .contrasts import BASE_SEQUENCE, DURA_ENHANCEMENT, Acquisition, SubjectContrast, dura_rim, stored, tissue_mix
from .deformation import COARSE_STEP, SubjectWarp, smooth_field, template_coordinates
from .geometry import Grid, thicken, thicken_label, to_image
from .lesions import Footprint, footprint
from .randomise import HeadModel, NormalEnhancement


@dataclass
class PhantomSession:
    """One synthetic study: images per suffix, labels on their image's grid, and per-lesion metadata."""

    subject: str
    session: str
    images: dict[str, nib.Nifti1Image] = field(default_factory=dict)
    labels: dict[str, nib.Nifti1Image] = field(default_factory=dict)
    lesions: list[dict] = field(default_factory=list)

    def filename(self, suffix: str) -> str:
        """BIDS-style flat name of one of this session's images (labels use the same name)."""
        return f"sub-{self.subject}_ses-{self.session}_{suffix}.nii.gz"


def _warp_map(data: np.ndarray, coords: np.ndarray, box: tuple[slice, ...], cval: float = 0.0) -> np.ndarray:
    """Trilinear resampling of a template map at template voxel coordinates, only inside `box`."""
    out = np.full(coords.shape[1:], cval, dtype=np.float32)
    out[box] = ndi.map_coordinates(data, coords[(slice(None), *box)], order=1, mode="constant", cval=cval,
                                   output=np.float32, prefilter=False)
    return out


def _output_box(coords: np.ndarray, tissue_box: tuple[slice, ...]) -> tuple[slice, ...]:
    """Output voxels whose template position can hold tissue (about half the grid), with a margin.

    Checked on the lattice where the coordinates are exact; they are linear in between.
    """
    lattice = coords[:, ::COARSE_STEP, ::COARSE_STEP, ::COARSE_STEP]
    inside = np.ones(lattice.shape[1:], dtype=bool)
    for axis, s in enumerate(tissue_box):
        inside &= (lattice[axis] >= s.start - 2) & (lattice[axis] <= s.stop + 1)
    if not inside.any():
        return (slice(0, 0),) * 3
    idx = np.argwhere(inside)
    lo = np.maximum((idx.min(axis=0) - 2) * COARSE_STEP, 0)
    hi = np.minimum((idx.max(axis=0) + 3) * COARSE_STEP, coords.shape[1:])
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def render_session(anat: Anatomy, warp: SubjectWarp, contrast: SubjectContrast, pathology: SessionPathology,
                   motion: np.ndarray, grid: Grid, acquisitions: dict[str, Acquisition],
                   subject: str, session: str, head: HeadModel | None = None,
                   storage: str = "int16", normal_enhancement: NormalEnhancement | None = None,
                   vessel_rng: np.random.Generator | None = None) -> PhantomSession:
    """Synthesise the requested sequences (keys of `acquisitions`) of one session on `grid`.

    `motion` maps the session's scanner world (mm) to subject space. With `head`, the skull, scalp and eyes
    are drawn around the brain (a whole-head, not skull-stripped, study).
    """
    voxel_to_subject = motion @ grid.affine
    coords = template_coordinates(warp, voxel_to_subject, grid.shape, anat.affine)
    box = _output_box(coords, anat.tissue_box)
    gm, wm, csf = (_warp_map(m, coords, box) for m in (anat.gm, anat.wm, anat.csf))
    diffuse = [_warp_map(d.template_map, coords, box) for d in pathology.diffuse]
    post = "ce-gadolinium_T1w" in acquisitions and normal_enhancement is not None
    extra = head_maps() if head is not None or contrast.deep_gm_gain or post else {}
    vessels = _normal_enhancement(extra, coords, normal_enhancement, vessel_rng) if post else None
    deep_gm = _warp_map(extra["deep_gm"], coords, box) if contrast.deep_gm_gain else None
    everywhere = (slice(None),) * 3
    outside = _warp_map(extra["outside"], coords, everywhere, cval=99.0) if head is not None else None
    eye = _warp_map(extra["eye"], coords, everywhere, cval=99.0) if head is not None else None
    del coords

    blobs = pathology.blobs
    prints: list[Footprint | None] = [footprint(b, voxel_to_subject, grid.shape, gm, wm) for b in blobs]
    carrier = np.clip(wm + 0.3 * gm, 0, 1)
    diffuse_prints = [Footprint(box=(slice(None),) * 3, weight=(p * carrier).astype(np.float32),
                                core=(p >= 0.5) & (carrier >= 0.5), enhancement=None) for p in diffuse]
    del carrier, diffuse

    flair = np.zeros(grid.shape, dtype=np.uint8)
    enhancing = np.zeros(grid.shape, dtype=np.uint8)
    for value in (1, 2):
        for fp, lesion in _painted(prints, blobs, diffuse_prints, pathology):
            if lesion_flair(lesion) == value:
                region = flair[fp.box]
                region[fp.core & (region == 0) if value == 2 else fp.core] = value
    for fp, blob in zip(prints, blobs, strict=True):
        if fp is not None and blob.ce_label:
            enhancing[fp.box][fp.core] = 1

    records = _records(prints, blobs, diffuse_prints, pathology, grid, motion)

    result = PhantomSession(subject=subject, session=session, lesions=records)
    for sequence, acq in acquisitions.items():
        base = BASE_SEQUENCE[sequence]
        wm_level = contrast.wm(sequence)
        signal = tissue_mix(contrast, sequence, gm, wm, csf)
        if deep_gm is not None and base == "FLAIR":
            signal += deep_gm * np.float32(contrast.deep_gm_gain * contrast.levels[base]["gm"])
        if head is not None:
            signal += head.signal(base, outside, eye, wm_level)
        for fp, lesion in _painted(prints, blobs, diffuse_prints, pathology):
            region = signal[fp.box]
            if getattr(lesion, "gains", None):
                region *= 1 + fp.weight * np.float32(lesion.gains[base])
            elif lesion.levels:
                level = lesion.levels[base]
                if contrast.lesion_gain != 1.0:
                    level = 1 + (level - 1) * contrast.lesion_gain
                region += fp.weight * (np.float32(level * wm_level) - region)
        if sequence == "ce-gadolinium_T1w":
            for fp, blob in zip(prints, blobs, strict=True):
                if fp is not None and fp.enhancement is not None:
                    signal[fp.box] += fp.enhancement * np.float32(blob.enhancement * wm_level)
            signal += dura_rim(gm + wm + csf, grid.spacing) * np.float32(DURA_ENHANCEMENT * wm_level)
            if vessels is not None:
                signal += vessels * np.float32(wm_level)
        signal *= acq.bias(grid.shape)
        signal *= np.float32(acq.gain)
        signal = acq.rician(thicken(signal, grid.slab, grid.axis), wm_level * acq.gain)
        values, stored_dtype = stored(signal, sequence, storage)
        result.images[sequence] = to_image(values, grid, stored_dtype)
        del signal
    if "FLAIR" in acquisitions:
        result.labels["FLAIR"] = to_image(thicken_label(flair, grid.slab, grid.axis), grid)
    if "ce-gadolinium_T1w" in acquisitions:
        result.labels["ce-gadolinium_T1w"] = to_image(thicken_label(enhancing, grid.slab, grid.axis), grid)
    return result


def _normal_enhancement(maps: dict, coords: np.ndarray, strength: NormalEnhancement,
                        rng: np.random.Generator) -> np.ndarray:
    """Post-contrast signal (relative to WM) of the choroid plexus, the dural sinuses and patchy cortical veins:
    bright, lesion-sized structures without a label."""
    everywhere = (slice(None),) * 3
    out = _warp_map(maps["choroid"], coords, everywhere) * np.float32(strength.choroid)
    out += _warp_map(maps["sinus"], coords, everywhere) * np.float32(strength.sinus)
    surface = _warp_map(maps["surface"], coords, everywhere)
    field = smooth_field(rng, surface.shape, 24, 1.0)
    cut = np.quantile(field, 1 - strength.vein_cover)
    out += surface * np.clip((field - cut) * 4, 0, 1) * np.float32(strength.veins)
    return out


def lesion_flair(lesion: object) -> int:
    """FLAIR label value a blob or diffuse lesion paints (0 for helpers such as halos)."""
    return int(getattr(lesion, "flair_label", 0))


def _painted(prints: list[Footprint | None], blobs: list, diffuse_prints: list[Footprint],
             pathology: SessionPathology):
    """(footprint, lesion) pairs in painting order: diffuse disease first, then blobs."""
    yield from zip(diffuse_prints, pathology.diffuse, strict=True)
    for fp, blob in zip(prints, blobs, strict=True):
        if fp is not None:
            yield fp, blob


def _records(prints: list[Footprint | None], blobs: list, diffuse_prints: list[Footprint],
             pathology: SessionPathology, grid: Grid, motion: np.ndarray) -> list[dict]:
    """Per-lesion metadata with world-space centres (this session's scanner world) and label volumes."""
    to_world = np.linalg.inv(motion)
    out = []
    for fp, blob in zip(prints, blobs, strict=True):
        if blob.record is None:
            continue
        centre = to_world[:3, :3] @ blob.centre + to_world[:3, 3]
        volume = float(fp.core.sum()) * grid.voxel_ml if fp is not None else 0.0
        out.append({**blob.record, "centre_mm": [round(float(v), 3) for v in centre],
                    "volume_ml": round(volume, 5)})
    for fp, lesion in zip(diffuse_prints, pathology.diffuse, strict=True):
        ijk = np.argwhere(fp.core)
        centre = grid.affine[:3, :3] @ ijk.mean(axis=0) + grid.affine[:3, 3] if len(ijk) else np.zeros(3)
        out.append({"kind": lesion.kind, "location": lesion.location, "enhancing": False, "new": False,
                    "centre_mm": [round(float(v), 3) for v in centre],
                    "volume_ml": round(float(len(ijk)) * grid.voxel_ml, 5)})
    return out
