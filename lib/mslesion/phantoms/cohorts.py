"""Pathology per cohort: the MS demo cohort and the non-MS pretraining cohorts."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .anatomy import Anatomy
from .contrasts import ENHANCEMENT_RANGE, LESION_LEVELS, lesion_levels
from .deformation import MassEffect, SubjectWarp, smooth_field
from .lesions import Blob, clear_of, lobes, orthonormal_axes, place, texture, tissue_at
from .ms import ACTIVE_COHORT_SHARE, ms_sessions

#: Glioma: main radius (mm), lobulation, infiltrative edge width (mm), mass-effect amplitude (<1).
GLIOMA_RADIUS_MM = (14.0, 26.0)
GLIOMA_LOBES = 0.45
GLIOMA_EDGE_MM = 4.0
#: Glioma margin roughness: amplitude (mm) and wavelengths (mm) of the wandering infiltrative surface.
GLIOMA_ROUGHNESS_MM = 6.0
GLIOMA_ROUGHNESS_WAVELENGTH_MM = (6.0, 20.0)
GLIOMA_MASS_EFFECT = (0.25, 0.45)
GLIOMA_SATELLITES = (2, 4)
#: Glioma change: new infiltrative growth regions per follow-up and their radius (mm).
GLIOMA_GROWTH_REGIONS = (1, 3)
GLIOMA_GROWTH_RADIUS_MM = (6.0, 12.0)
#: Leukoencephalopathy: periventricular band width (mm) and the SD (mm) of its smooth symmetric wobble.
LEUKO_BAND_MM = (4.0, 11.0)
LEUKO_WOBBLE_MM = 3.0
#: Small-vessel disease: number and radius (mm) of punctate hyperintensities, and where they sit.
SMALL_VESSEL_COUNT = (15, 60)
SMALL_VESSEL_RADIUS_MM = (0.9, 1.8)
SMALL_VESSEL_LOCATIONS = {"deep_wm": 0.6, "basal_ganglia": 0.4}
#: Metastases: count, radius (mm), locations, ring-enhancement chance (if radius > 5 mm), oedema margin (mm).
METASTASIS_COUNT = (1, 6)
METASTASIS_RADIUS_MM = (2.5, 12.0)
METASTASIS_LOCATIONS = {"juxtacortical": 0.7, "deep_wm": 0.15, "infratentorial": 0.15}
METASTASIS_RING_PROB = 0.7
METASTASIS_OEDEMA_MM = (4.0, 18.0)


@dataclass
class DiffuseLesion:
    """Pathology defined as a template-space fraction map, warped with the anatomy (confluent disease)."""

    kind: str
    location: str
    template_map: np.ndarray  # float32 on the template grid, 0..1
    levels: dict[str, float]
    flair_label: int = 1


@dataclass
class SessionPathology:
    """What one session shows: blobs in painting order and diffuse lesions."""

    blobs: list[Blob] = field(default_factory=list)
    diffuse: list[DiffuseLesion] = field(default_factory=list)


def cohort_sessions(cohort: str, rng: np.random.Generator, anat: Anatomy, warp: SubjectWarp,
                    n_sessions: int, signs_rng: np.random.Generator | None = None,
                    ) -> tuple[SubjectWarp, list[SessionPathology]]:
    """The subject's pathology per session (and the warp, with any mass effect added). ``signs_rng``: MS
    activity signs drawn at random (the randomised generator), else the fixed signature."""
    maker = COHORT_MAKERS.get(cohort)
    if maker is None:
        raise ValueError(f"unknown cohort {cohort!r}")
    return maker(rng, anat, warp, n_sessions, signs_rng)


def _ms(rng, anat, warp, n_sessions, signs_rng):
    return warp, [SessionPathology(blobs=b) for b in ms_sessions(rng, anat, warp, n_sessions, signs_rng)]


def _ms_active(rng, anat, warp, n_sessions, signs_rng):
    """MS in relapse: a share of the lesions enhances in every session (ms.ACTIVE_COHORT_SHARE)."""
    sessions = ms_sessions(rng, anat, warp, n_sessions, signs_rng, active_share=ACTIVE_COHORT_SHARE)
    return warp, [SessionPathology(blobs=b) for b in sessions]


def _ms_relapse(rng, anat, warp, n_sessions, signs_rng):
    """MS with a relapse before every follow-up: several new lesions and more enlarging ones (ms.RELAPSE_*)."""
    sessions = ms_sessions(rng, anat, warp, n_sessions, signs_rng, relapse=True)
    return warp, [SessionPathology(blobs=b) for b in sessions]


def _healthy(rng, anat, warp, n_sessions, signs_rng):
    """No lesion at all: what a model must leave empty."""
    return warp, [SessionPathology() for _ in range(n_sessions)]


def _same_every_session(make_blobs=None, make_diffuse=None):
    """A cohort whose pathology does not change between sessions."""
    def maker(rng, anat, warp, n_sessions, signs_rng):
        blobs = make_blobs(rng, anat, warp) if make_blobs else []
        diffuse = [make_diffuse(rng, anat)] if make_diffuse else []
        return warp, [SessionPathology(blobs=list(blobs), diffuse=list(diffuse)) for _ in range(n_sessions)]
    return maker


def _record(kind: str, location: str, new: bool = False, enhancing: bool = False, **extra: object) -> dict:
    """Reported metadata of a blob (centre and volume are added when it is rendered)."""
    return {"kind": kind, "location": location, "enhancing": enhancing, "new": new, **extra}


def _depth_ok(anat: Anatomy, warp: SubjectWarp, min_depth_mm: float):
    """Acceptance test: the point lies at least this deep below the brain surface."""
    def accept(point: np.ndarray) -> bool:
        return float(anat.sample("depth", warp.to_template(point[None, :]))[0]) >= min_depth_mm
    return accept


def _unit(rng: np.random.Generator) -> np.ndarray:
    """A random direction."""
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _glioma(rng: np.random.Generator, anat: Anatomy, warp: SubjectWarp, n_sessions: int,
            grows: bool) -> tuple[SubjectWarp, list[SessionPathology]]:
    """One large infiltrative, lobulated, mass-like FLAIR hyperintensity; optionally growing."""
    radius = float(rng.uniform(*GLIOMA_RADIUS_MM))
    centre = place(rng, anat, warp, "deep_wm", accept=_depth_ok(anat, warp, 18.0), tries=20)
    if centre is None:
        centre = place(rng, anat, warp, "deep_wm", tries=50)
    assert centre is not None, "no deep white matter found for the glioma"
    levels = lesion_levels(rng, "glioma")
    blobs = [Blob(kind="glioma", location="deep_wm", centre=centre, axes=orthonormal_axes(rng),
                  radii=radius * rng.uniform(0.8, 1.15, 3), levels=levels, edge_mm=GLIOMA_EDGE_MM,
                  lobes=lobes(rng, GLIOMA_LOBES, n=10, frequency=(1.0, 5.0)),
                  texture=texture(rng, GLIOMA_ROUGHNESS_MM, GLIOMA_ROUGHNESS_WAVELENGTH_MM),
                  record=_record("glioma", "deep_wm", part="main"))]
    for _ in range(int(rng.integers(GLIOMA_SATELLITES[0], GLIOMA_SATELLITES[1] + 1))):
        c = centre + _unit(rng) * radius * rng.uniform(0.6, 0.9)
        blobs.append(Blob(kind="glioma", location="deep_wm", centre=c, axes=orthonormal_axes(rng),
                          radii=radius * rng.uniform(0.3, 0.55) * rng.uniform(0.85, 1.15, 3), levels=levels,
                          edge_mm=GLIOMA_EDGE_MM * 0.75, lobes=lobes(rng, GLIOMA_LOBES * 0.8),
                          texture=texture(rng, GLIOMA_ROUGHNESS_MM / 2, GLIOMA_ROUGHNESS_WAVELENGTH_MM),
                          record=_record("glioma", "deep_wm", part="satellite")))
    warp = warp.with_masses((MassEffect(centre=centre, sigma_mm=0.8 * radius,
                                        amplitude=float(rng.uniform(*GLIOMA_MASS_EFFECT))),))
    sessions = [SessionPathology(blobs=list(blobs))]
    for _ in range(1, n_sessions):
        growth = []
        if grows:
            for _ in range(int(rng.integers(GLIOMA_GROWTH_REGIONS[0], GLIOMA_GROWTH_REGIONS[1] + 1))):
                for _ in range(20):  # grow into tissue, not into the ventricles or out of the brain
                    c = centre + _unit(rng) * radius * rng.uniform(0.9, 1.2)
                    if tissue_at(anat, warp, c) >= 0.7:
                        break
                growth.append(Blob(kind="glioma", location="deep_wm", centre=c, axes=orthonormal_axes(rng),
                                   radii=rng.uniform(*GLIOMA_GROWTH_RADIUS_MM) * rng.uniform(0.8, 1.2, 3),
                                   levels=levels, edge_mm=3.0, lobes=lobes(rng, 0.35), flair_label=2,
                                   texture=texture(rng, GLIOMA_ROUGHNESS_MM / 2, GLIOMA_ROUGHNESS_WAVELENGTH_MM),
                                   record=_record("glioma", "deep_wm", new=True, part="growth")))
        # earlier growth is ordinary tumour (label 1) from the next session on
        blobs = [_as_old(b) for b in blobs] + growth
        sessions.append(SessionPathology(blobs=blobs))
    return warp, sessions


def _as_old(blob: Blob) -> Blob:
    """The blob as seen in a later session: no longer new (a copy; earlier sessions keep theirs)."""
    if blob.flair_label != 2:
        return blob
    return replace(blob, flair_label=1, record={**(blob.record or {}), "new": False})


def _metastases(rng: np.random.Generator, anat: Anatomy, warp: SubjectWarp) -> list[Blob]:
    """1-6 round enhancing metastases (ring or solid) with vasogenic oedema around them."""
    n = int(rng.integers(METASTASIS_COUNT[0], METASTASIS_COUNT[1] + 1))
    oedemas: list[Blob] = []
    cores: list[Blob] = []
    necroses: list[Blob] = []
    for _ in range(4 * n):
        if len(cores) >= n:
            break
        location = str(rng.choice(list(METASTASIS_LOCATIONS), p=list(METASTASIS_LOCATIONS.values())))
        radius = float(np.exp(rng.uniform(*np.log(METASTASIS_RADIUS_MM))))
        if location == "infratentorial":
            radius = min(radius, 7.0)
        margin = float(rng.uniform(*METASTASIS_OEDEMA_MM))
        centre = place(rng, anat, warp, location,
                       accept=lambda c, r=radius: clear_of(c, r + 4.0, cores, 4.0))
        if centre is None:
            continue
        ring = radius > 5.0 and rng.random() < METASTASIS_RING_PROB
        pattern = "ring" if ring else "nodular"
        axes = orthonormal_axes(rng)
        radii = radius * rng.uniform(0.9, 1.1, 3)
        oedemas.append(Blob(kind="oedema", location=location, centre=centre, axes=orthonormal_axes(rng),
                            radii=(radius + margin) * rng.uniform(0.8, 1.25, 3), levels=lesion_levels(rng, "oedema"),
                            edge_mm=3.0, lobes=lobes(rng, 0.35), carrier="white",
                            texture=texture(rng, 3.0, (5.0, 15.0)),
                            record=_record("oedema", location)))
        cores.append(Blob(kind="metastasis", location=location, centre=centre, axes=axes, radii=radii,
                          levels=lesion_levels(rng, "metastasis"), edge_mm=0.8, ce_label=1,
                          enhancement=float(rng.uniform(*ENHANCEMENT_RANGE["metastasis"])), pattern=pattern,
                          record=_record("metastasis", location, enhancing=True, enhancement=pattern)))
        if ring:
            necroses.append(Blob(kind="necrosis", location=location, centre=centre, axes=axes,
                                 radii=radii * 0.6, levels=dict(LESION_LEVELS["necrosis"]), edge_mm=1.0,
                                 flair_label=0))
    return oedemas + cores + necroses


def _small_vessel(rng: np.random.Generator, anat: Anatomy, warp: SubjectWarp) -> list[Blob]:
    """Many punctate deep WM / basal ganglia hyperintensities."""
    n = int(rng.integers(SMALL_VESSEL_COUNT[0], SMALL_VESSEL_COUNT[1] + 1))
    blobs: list[Blob] = []
    for _ in range(2 * n):
        if len(blobs) >= n:
            break
        location = str(rng.choice(list(SMALL_VESSEL_LOCATIONS), p=list(SMALL_VESSEL_LOCATIONS.values())))
        radius = float(rng.uniform(*SMALL_VESSEL_RADIUS_MM))
        centre = place(rng, anat, warp, location, accept=lambda c, r=radius: clear_of(c, r, blobs, 1.0))
        if centre is None:
            continue
        blobs.append(Blob(kind="small_vessel", location=location, centre=centre, axes=orthonormal_axes(rng),
                          radii=radius * rng.uniform(0.8, 1.2, 3), levels=lesion_levels(rng, "small_vessel"),
                          edge_mm=0.6, record=_record("small_vessel", location)))
    return blobs


def _leukoencephalopathy(rng: np.random.Generator, anat: Anatomy) -> DiffuseLesion:
    """Confluent, left-right symmetric periventricular WM hyperintensity (a template-space map)."""
    band = float(rng.uniform(*LEUKO_BAND_MM))
    wobble = smooth_field(rng, anat.shape, 6, LEUKO_WOBBLE_MM)
    wobble = 0.5 * (wobble + wobble[::-1])  # the template's x axis is symmetric about its middle voxel
    vdist = 0.5 * (anat.ventricle_distance + anat.ventricle_distance[::-1])
    frac = np.clip(0.5 + (band + wobble - vdist) / 3.0, 0.0, 1.0) * (anat.wm > 0.3)
    return DiffuseLesion(kind="leukoencephalopathy", location="periventricular",
                         template_map=frac.astype(np.float32), levels=lesion_levels(rng, "leukoencephalopathy"))


#: Every cohort and the function that draws its pathology: (rng, anatomy, warp, sessions, signs rng) ->
#: (warp, per-session pathology). A new cohort is a function here plus its name at the end of options.COHORTS
#: (the order keys the random streams, so existing cohorts keep their studies).
COHORT_MAKERS = {
    "ms": _ms,
    "ms_active": _ms_active,
    "glioma": lambda rng, anat, warp, n, signs: _glioma(rng, anat, warp, n, grows=False),
    "leukoencephalopathy": _same_every_session(make_diffuse=_leukoencephalopathy),
    "small_vessel": _same_every_session(make_blobs=_small_vessel),
    "glioma_change": lambda rng, anat, warp, n, signs: _glioma(rng, anat, warp, n, grows=True),
    "metastasis": _same_every_session(make_blobs=_metastases),
    "healthy": _healthy,
    "ms_relapse": _ms_relapse,
}
