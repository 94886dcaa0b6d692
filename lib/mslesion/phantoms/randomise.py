"""Domain randomisation (the SynthSeg idea): every training study draws its own acquisition and appearance.

A model trained on one contrast, one resolution and skull-stripped brains learns the generator, not the disease.
Here each subject draws, from streams of its own (so the anatomy and lesions never change with them):

- the acquisition variant (``random_options``): 1 mm or near-isotropic 3D, thick axial, sagittal or coronal 2D
  slices, any axis order, integer storage with or without a scale slope or float storage, skull-stripped or
  whole head;
- the contrast (``randomised_contrast``): grey/white ratio, CSF suppression, bright deep grey nuclei and cortex
  on FLAIR, lesion contrast from faint to bright, each per subject;
- per sequence and session: bias field strength and noise level (``randomised_acquisition``);
- around the brain (``HeadModel``): CSF gap, skull with marrow, scalp fat, skin and muscle, and the eyes.

The ranges are wider than most real scans on purpose: what a model meets at a new site is inside them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .contrasts import TISSUE_LEVELS, Acquisition, SubjectContrast
from .deformation import ELASTIC_RMS_MM, SubjectWarp, random_warp
from .options import PhantomOptions

#: Pure-tissue ranges per base sequence, relative to normal white matter (WM = 1): grey matter, CSF. Real FLAIR
#: grey/white is about 1.2-1.35; the range is a little wider, but grey matter stays below the faintest lesions.
GM_WM_RATIO = {"FLAIR": (1.08, 1.38), "T2w": (1.15, 1.6), "T1w": (0.62, 0.82)}
CSF_WM_RATIO = {"FLAIR": (0.05, 0.45), "T2w": (1.8, 3.0), "T1w": (0.2, 0.45)}
#: Deep grey nuclei and cortex that look brighter than the rest of grey matter on FLAIR (a naive model's FP).
DEEP_GM_GAIN = (-0.05, 0.25)
#: Lesion contrast (level - 1) is multiplied by this per subject: faint to very bright lesions. An MS lesion at
#: 1.75 x WM lands at 1.45-2.05 x WM (real lesions: 1.5-2 x). Lower gains made lesions darker than cortex, which
#: taught the network to call cortex lesion and pushed the tuned threshold to 0.98 (2026-12-06 run).
LESION_GAIN = (0.6, 1.4)
#: Per sequence and session.
BIAS_SD = (0.02, 0.3)
NOISE_FRACTION = (0.01, 0.07)

#: Normal enhancement on post-contrast T1 (relative to WM): choroid plexus, dural sinuses, cortical veins, and
#: how much of the brain surface the veins cover (a threshold on a smooth random field).
CHOROID_ENHANCEMENT = (0.3, 0.9)
SINUS_ENHANCEMENT = (0.4, 1.2)
VEIN_ENHANCEMENT = (0.3, 0.9)
VEIN_COVER = (0.02, 0.08)

#: Acquisition variants and their chances: what scanners write.
VARIANTS = {"iso_1mm": 0.3, "iso_other": 0.1, "axial_thick": 0.25, "sagittal": 0.2, "coronal": 0.05,
            "low_res_3d": 0.1}
ORIENTATIONS = ("RAS", "LPS", "LAS", "RPI", "PSR", "ASL", "LIP", "SPL")
STORAGE_CHANCES = {"int16": 0.4, "scaled_uint16": 0.4, "float32": 0.2}
WHOLE_HEAD_PROB = 0.5


def random_options(rng: np.random.Generator, sequences: tuple[str, ...]) -> tuple[PhantomOptions, str]:
    """One subject's acquisition: a PhantomOptions drawn from VARIANTS, and the variant's name."""
    variant = str(rng.choice(list(VARIANTS), p=list(VARIANTS.values())))
    spacing, thickness, axis = (1.0, 1.0, 1.0), None, "S"
    if variant == "iso_other":
        spacing = (float(rng.uniform(0.8, 1.3)),) * 3
    elif variant == "low_res_3d":
        spacing = tuple(float(v) for v in rng.uniform(1.2, 2.0, 3))
    elif variant in ("axial_thick", "sagittal", "coronal"):
        axis = {"axial_thick": "S", "sagittal": "R", "coronal": "A"}[variant]
        in_plane = float(rng.uniform(0.7, 1.1))
        thickness = float(rng.uniform(2.5, 5.0))
        # the synthesis step along the slice axis stays near 1 mm; the written slice is `thickness` thick
        spacing = tuple(1.0 if "RAS"[i] == axis else in_plane for i in range(3))
    options = PhantomOptions(
        spacing=spacing, slice_thickness=thickness, slice_axis=axis, sequences=sequences,
        orientation=str(rng.choice(ORIENTATIONS)),
        storage=str(rng.choice(list(STORAGE_CHANCES), p=list(STORAGE_CHANCES.values()))),
        whole_head=bool(rng.random() < WHOLE_HEAD_PROB), randomised=True,
    )
    return options, variant


#: Between visits: residual non-rigid change of the anatomy (RMS mm) and drift of every tissue level (SD).
FOLLOW_UP_ELASTIC_RMS_MM = (0.3, 1.0)
FOLLOW_UP_CONTRAST_DRIFT = 0.04


def follow_up_drift(rng: np.random.Generator, warp: SubjectWarp,
                    contrast: SubjectContrast) -> tuple[SubjectWarp, SubjectContrast]:
    """A follow-up's anatomy and contrast: a small smooth deformation that an affine registration leaves behind
    (head position, atrophy, distortion) and a drift of the tissue levels (another scanner software, coil)."""
    rms = float(rng.uniform(*FOLLOW_UP_ELASTIC_RMS_MM))
    extra = random_warp(rng).control * np.float64(rms / ELASTIC_RMS_MM)
    moved = SubjectWarp(affine=warp.affine, control=warp.control + extra, masses=warp.masses)
    levels = {seq: {t: v * float(1 + rng.normal(0, FOLLOW_UP_CONTRAST_DRIFT)) for t, v in tissues.items()}
              for seq, tissues in contrast.levels.items()}
    drifted = SubjectContrast(levels, lesion_gain=contrast.lesion_gain, deep_gm_gain=contrast.deep_gm_gain)
    return moved, drifted


#: The shifted test split: seeds from here on belong to it, and training draws refuse them (and the reverse), so a
#: test subject can never be a training subject. Its acquisitions are fixed settings that no training draw hits
#: exactly; each model family evaluates on the ones its inputs allow.
TEST_SEED_FLOOR = 90000
SHIFTED_ACQUISITIONS: dict[str, dict] = {
    "1mm": {"spacing": (1.0, 1.0, 1.0)},
    "3mm_axial": {"spacing": (0.9, 0.9, 1.0), "slice_thickness": 3.0},
    "sagittal": {"spacing": (1.0, 0.95, 0.95), "slice_thickness": 4.0, "slice_axis": "R"},
    "whole_head": {"spacing": (1.0, 1.0, 1.0), "whole_head": True},
    "integer_lps": {"spacing": (1.0, 1.0, 1.0), "orientation": "LPS", "storage": "scaled_uint16"},
    "lesion_free": {"spacing": (1.0, 1.0, 1.0)},
}


def require_training_seed(seed: int) -> None:
    if seed >= TEST_SEED_FLOOR:
        raise ValueError(f"training seeds stay below {TEST_SEED_FLOOR}: those above belong to the shifted test split")


def require_test_seed(seed: int) -> None:
    if seed < TEST_SEED_FLOOR:
        raise ValueError(f"the shifted test split uses seeds {TEST_SEED_FLOOR} and above (training draws stay "
                         f"below), not {seed}")


#: Named sites with an appearance outside the training ranges (the new-site benchmark). ``site_b``: a FLAIR whose
#: CSF suppression failed (CSF at 0.7 x WM), with bright cortex (1.40 x WM), a strong bias field and more noise, each
#: outside its training range; lesions as a real FLAIR shows them (1.6 x WM, brighter than cortex and deep nuclei).
#: Earlier versions made lesions darker than cortex (1.32 or 1.49 against 1.5 / 1.42, deep nuclei at 1.85): no
#: scanner writes that, and neither the defaults nor 4 corrected studies could find them (F1 0.01-0.11).
SITES = {
    "site_b": {"gm_wm": {"FLAIR": 1.40, "T2w": 1.7, "T1w": 0.58}, "csf_wm": {"FLAIR": 0.7, "T2w": 3.2, "T1w": 0.18},
               "lesion_gain": 0.8, "deep_gm_gain": 0.12, "bias_sd": 0.32, "noise": 0.075},
}


def site_contrast(site: str) -> SubjectContrast:
    """The fixed tissue levels of a named site (SITES)."""
    spec = SITES[site]
    levels = {seq: {"wm": t["wm"], "gm": t["wm"] * spec["gm_wm"][seq], "csf": t["wm"] * spec["csf_wm"][seq]}
              for seq, t in TISSUE_LEVELS.items()}
    return SubjectContrast(levels, lesion_gain=spec["lesion_gain"], deep_gm_gain=spec["deep_gm_gain"])


def site_acquisition(site: str, rng: np.random.Generator) -> Acquisition:
    spec = SITES[site]
    return Acquisition(gain=1.0, noise_fraction=spec["noise"], rng=rng, bias_sd=spec["bias_sd"])


def randomised_contrast(rng: np.random.Generator) -> SubjectContrast:
    """Tissue levels, lesion gain and deep grey brightness of one subject, drawn from the wide ranges."""
    levels = {}
    for seq, tissues in TISSUE_LEVELS.items():
        wm = tissues["wm"]
        levels[seq] = {"wm": wm, "gm": wm * float(rng.uniform(*GM_WM_RATIO[seq])),
                       "csf": wm * float(rng.uniform(*CSF_WM_RATIO[seq]))}
    return SubjectContrast(levels, lesion_gain=float(rng.uniform(*LESION_GAIN)),
                           deep_gm_gain=float(rng.uniform(*DEEP_GM_GAIN)))


def randomised_acquisition(rng: np.random.Generator) -> Acquisition:
    """Gain, noise and bias strength of one sequence of one session."""
    return Acquisition(gain=float(rng.uniform(0.8, 1.2)), noise_fraction=float(rng.uniform(*NOISE_FRACTION)),
                       rng=rng, bias_sd=float(rng.uniform(*BIAS_SD)))


#: Head layers outside the brain mask: (name, thickness range mm). The CSF gap comes first.
HEAD_LAYERS = (("gap", (0.5, 2.5)), ("bone", (1.5, 3.0)), ("marrow", (1.5, 4.0)), ("bone", (1.0, 2.5)),
               ("fat", (2.0, 6.0)), ("skin", (1.5, 3.5)))
#: Signal relative to WM per base sequence (ranges drawn per subject).
HEAD_TISSUES = {
    "gap": {"FLAIR": (0.05, 0.3), "T2w": (1.8, 3.0), "T1w": (0.2, 0.45)},
    "bone": {"FLAIR": (0.0, 0.08), "T2w": (0.0, 0.1), "T1w": (0.0, 0.1)},
    "marrow": {"FLAIR": (0.7, 1.3), "T2w": (0.6, 1.1), "T1w": (1.0, 1.4)},
    "fat": {"FLAIR": (0.9, 1.6), "T2w": (0.9, 1.5), "T1w": (1.15, 1.6)},
    "skin": {"FLAIR": (0.5, 0.9), "T2w": (0.45, 0.8), "T1w": (0.5, 0.8)},
    "eye": {"FLAIR": (0.05, 0.2), "T2w": (2.0, 3.0), "T1w": (0.15, 0.3)},
}
#: Eye centres in MNI mm (left, right) and radius; orbital fat surrounds them.
EYE_CENTRES_MM = ((-31.0, 58.0, -36.0), (31.0, 58.0, -36.0))
EYE_RADIUS_MM = (10.5, 12.5)


@dataclass(frozen=True)
class NormalEnhancement:
    """How strongly a subject's normal enhancing structures light up on post-contrast T1."""

    choroid: float
    sinus: float
    veins: float
    vein_cover: float


def random_normal_enhancement(rng: np.random.Generator) -> NormalEnhancement:
    return NormalEnhancement(choroid=float(rng.uniform(*CHOROID_ENHANCEMENT)),
                             sinus=float(rng.uniform(*SINUS_ENHANCEMENT)), veins=float(rng.uniform(*VEIN_ENHANCEMENT)),
                             vein_cover=float(rng.uniform(*VEIN_COVER)))


@dataclass(frozen=True)
class HeadModel:
    """Layer boundaries (mm outside the brain mask) and signal levels of a subject's head around the brain."""

    bounds: tuple[tuple[str, float, float], ...]  # (tissue, inner mm, outer mm)
    levels: dict[str, dict[str, float]]  # tissue -> base sequence -> level relative to WM
    eye_radius_mm: float

    def signal(self, base: str, outside_mm: np.ndarray, eye_mm: np.ndarray, wm_level: float) -> np.ndarray:
        """Signal of everything outside the brain on one base sequence: the layers by distance, the eyes
        by their own distance map, soft 1 mm transitions (partial volume)."""
        out = np.zeros(outside_mm.shape, dtype=np.float32)
        for tissue, inner, outer in self.bounds:
            weight = np.clip(outside_mm - inner + 0.5, 0, 1) * np.clip(outer - outside_mm + 0.5, 0, 1)
            out += weight.astype(np.float32) * np.float32(self.levels[tissue][base] * wm_level)
        eye = np.clip(self.eye_radius_mm - eye_mm + 0.5, 0, 1).astype(np.float32)
        orbit = np.clip(self.eye_radius_mm + 4.0 - eye_mm + 0.5, 0, 1).astype(np.float32) - eye
        out = out * (1 - eye - orbit) + eye * np.float32(self.levels["eye"][base] * wm_level) \
            + orbit * np.float32(self.levels["fat"][base] * wm_level)
        return out * (outside_mm > 0)

    @property
    def reach_mm(self) -> float:
        return self.bounds[-1][2]


def random_head(rng: np.random.Generator) -> HeadModel:
    """One subject's head: layer thicknesses and tissue levels."""
    bounds, edge = [], 0.0
    for tissue, (lo, hi) in HEAD_LAYERS:
        thickness = float(rng.uniform(lo, hi))
        bounds.append((tissue, edge, edge + thickness))
        edge += thickness
    levels = {t: {seq: float(rng.uniform(*r)) for seq, r in per.items()} for t, per in HEAD_TISSUES.items()}
    return HeadModel(bounds=tuple(bounds), levels=levels, eye_radius_mm=float(rng.uniform(*EYE_RADIUS_MM)))
