"""Intensity models: tissue mixtures per sequence, lesion appearances, bias field, Rician noise, int16."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .deformation import smooth_field

#: Which tissue model each written sequence uses (post-contrast T1 is T1w plus enhancement).
BASE_SEQUENCE = {"T1w": "T1w", "T2w": "T2w", "FLAIR": "FLAIR", "ce-gadolinium_T1w": "T1w"}

#: Pure-tissue signal (CSF, GM, WM) per base sequence, arbitrary units; mixtures are PD-like linear blends.
TISSUE_LEVELS = {
    "T1w": {"csf": 0.25, "gm": 0.62, "wm": 0.88},
    "T2w": {"csf": 1.00, "gm": 0.62, "wm": 0.45},
    "FLAIR": {"csf": 0.10, "gm": 0.62, "wm": 0.48},  # CSF suppressed
}
#: Relative per-subject jitter (SD) of each tissue level.
SUBJECT_TISSUE_JITTER = 0.04

#: Lesion signal relative to the subject's normal-appearing WM, per base sequence.
LESION_LEVELS = {
    "ms": {"FLAIR": 1.75, "T2w": 1.90, "T1w": 0.82},  # T2/FLAIR hyperintense, mildly T1-hypointense
    "black_hole": {"FLAIR": 1.80, "T2w": 2.10, "T1w": 0.50},  # chronic MS lesion, strongly T1-hypointense
    "glioma": {"FLAIR": 1.70, "T2w": 2.00, "T1w": 0.72},
    "leukoencephalopathy": {"FLAIR": 1.50, "T2w": 1.60, "T1w": 0.90},
    "small_vessel": {"FLAIR": 1.65, "T2w": 1.80, "T1w": 0.80},
    "metastasis": {"FLAIR": 1.30, "T2w": 1.35, "T1w": 0.85},
    "necrosis": {"FLAIR": 1.20, "T2w": 2.30, "T1w": 0.45},
    "oedema": {"FLAIR": 1.55, "T2w": 1.75, "T1w": 0.88},
}
#: Per-lesion relative jitter (uniform +-) of the lesion contrast (level - 1).
LESION_CONTRAST_JITTER = 0.15

# --- Non-contrast signature of active (enhancing) MS lesions. Fixed: a later model is evaluated on it. ---
#: An active lesion's T2w/FLAIR contrast (level - 1) is multiplied by this (slightly brighter).
ACTIVE_T2_CONTRAST_GAIN = 1.20
#: An active lesion's T1w hypointensity (1 - level) is multiplied by this (less dark); never a black hole.
ACTIVE_T1_HYPO_SCALE = 0.5
#: Perilesional oedema halo around an active lesion: full at the lesion edge, half at this many mm
#: outside it, gone at twice that.
ACTIVE_HALO_MM = 2.0
#: Multiplicative signal change inside the halo, per base sequence (the halo carries no label).
ACTIVE_HALO_GAIN = {"FLAIR": 0.12, "T2w": 0.10, "T1w": -0.03}

#: Gadolinium enhancement amplitude (relative to WM on T1w) per pattern.
ENHANCEMENT_RANGE = {"nodular": (0.35, 0.60), "ring": (0.45, 0.70), "metastasis": (0.50, 0.90)}
#: Ring enhancement: radial position (fraction of the lesion radius) and width of the enhancing shell.
RING_CENTRE = 0.82
RING_WIDTH = 0.20
#: Dura-like rim just outside the brain that enhances on post-contrast T1 (relative to WM).
DURA_ENHANCEMENT = 0.6

#: Written int16 value of signal 1.0, per sequence (WM lands around 500-900).
INT_SCALE = {"T1w": 1000.0, "ce-gadolinium_T1w": 1000.0, "T2w": 1400.0, "FLAIR": 1300.0}
#: Per-session, per-sequence receiver gain, Rician noise SD (fraction of WM signal) and bias field SD.
GAIN_RANGE = (0.9, 1.1)
NOISE_FRACTION_RANGE = (0.015, 0.035)
BIAS_SD = 0.07
BIAS_CONTROL_POINTS = 4


@dataclass(frozen=True)
class SubjectContrast:
    """A subject's tissue levels per base sequence (jittered from TISSUE_LEVELS)."""

    levels: dict[str, dict[str, float]]
    lesion_gain: float = 1.0  # lesion contrast (level - 1) is scaled by this (domain randomisation)
    deep_gm_gain: float = 0.0  # extra FLAIR signal of deep grey nuclei, relative to grey matter

    def wm(self, sequence: str) -> float:
        """Normal-appearing WM signal of a written sequence."""
        return self.levels[BASE_SEQUENCE[sequence]]["wm"]


def random_contrast(rng: np.random.Generator) -> SubjectContrast:
    """Per-subject tissue levels."""
    levels = {
        seq: {t: float(v * (1 + rng.normal(0, SUBJECT_TISSUE_JITTER))) for t, v in tissues.items()}
        for seq, tissues in TISSUE_LEVELS.items()
    }
    return SubjectContrast(levels)


def lesion_levels(rng: np.random.Generator, kind: str) -> dict[str, float]:
    """A lesion's own levels: the kind's levels with the contrast jittered per lesion."""
    out = {}
    for seq, level in LESION_LEVELS[kind].items():
        out[seq] = float(1 + (level - 1) * (1 + rng.uniform(-LESION_CONTRAST_JITTER, LESION_CONTRAST_JITTER)))
    return out


def active_levels(levels: dict[str, float]) -> dict[str, float]:
    """The non-contrast signature: what the same lesion looks like while it enhances."""
    return {
        "FLAIR": 1 + (levels["FLAIR"] - 1) * ACTIVE_T2_CONTRAST_GAIN,
        "T2w": 1 + (levels["T2w"] - 1) * ACTIVE_T2_CONTRAST_GAIN,
        "T1w": 1 - (1 - levels["T1w"]) * ACTIVE_T1_HYPO_SCALE,
    }


def tissue_mix(contrast: SubjectContrast, sequence: str, gm: np.ndarray, wm: np.ndarray,
               csf: np.ndarray) -> np.ndarray:
    """Noise-free signal of normal tissue as a linear blend of the tissue fractions."""
    lv = contrast.levels[BASE_SEQUENCE[sequence]]
    out = gm * np.float32(lv["gm"])
    out += wm * np.float32(lv["wm"])
    out += csf * np.float32(lv["csf"])
    return out


def dura_rim(brain: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """A ~1-2 mm shell just outside the brain (fraction 0..1), the dura-like enhancing rim."""
    size = [max(3, int(round(2.0 / s)) | 1) for s in spacing]
    near = ndi.uniform_filter(brain, size=size, mode="constant")
    return np.clip(2.0 * (1.0 - brain) * near, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Acquisition:
    """One sequence of one session: receiver gain, noise level and a smooth multiplicative bias field."""

    gain: float
    noise_fraction: float
    rng: np.random.Generator
    bias_sd: float = BIAS_SD

    def bias(self, shape: tuple[int, int, int]) -> np.ndarray:
        """Multiplicative bias field exp(smooth field) on the synthesis grid."""
        return np.exp(smooth_field(self.rng, shape, BIAS_CONTROL_POINTS, self.bias_sd))

    def rician(self, signal: np.ndarray, wm_signal: float) -> np.ndarray:
        """Magnitude of the signal plus complex Gaussian noise (in place, to keep memory low)."""
        sigma = np.float32(self.noise_fraction * wm_signal)
        noise = np.empty(signal.shape, dtype=np.float32)
        out = np.array(signal, dtype=np.float32, copy=True)
        self.rng.standard_normal(dtype=np.float32, out=noise)
        noise *= sigma
        out += noise
        self.rng.standard_normal(dtype=np.float32, out=noise)
        noise *= sigma
        return np.hypot(out, noise, out=out)


def random_acquisition(rng: np.random.Generator) -> Acquisition:
    """Draw gain and noise for one sequence of one session; the rng then feeds bias and noise."""
    return Acquisition(gain=float(rng.uniform(*GAIN_RANGE)), noise_fraction=float(rng.uniform(*NOISE_FRACTION_RANGE)),
                       rng=rng)


def to_int16(signal: np.ndarray, sequence: str) -> np.ndarray:
    """Scale to the sequence's int16 range (what a scanner would store)."""
    scaled = np.rint(signal * np.float32(INT_SCALE[sequence]))
    return np.clip(scaled, 0, np.iinfo(np.int16).max).astype(np.int16)


def stored(signal: np.ndarray, sequence: str, storage: str) -> tuple[np.ndarray, type | None]:
    """The array to write and the dtype to store it as: int16 as is, float32, or float data that nibabel stores
    as uint16 with a scale slope and intercept (``scaled_uint16``)."""
    if storage == "int16":
        return to_int16(signal, sequence), None
    values = (signal * np.float32(INT_SCALE[sequence])).astype(np.float32)
    return values, (np.uint16 if storage == "scaled_uint16" else None)
