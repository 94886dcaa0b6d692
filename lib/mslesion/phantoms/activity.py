"""Randomised non-contrast signs of MS activity (``PhantomOptions(randomised=True)`` only).

On scans without contrast, an enhancing (active) MS lesion is *more often* brighter on T2/FLAIR, wrapped in a
faint oedema halo, iso- rather than strongly hypointense on T1 (never a black hole) and ill-defined at its margin
than an inactive one, and more often new or enlarging. None of these signs is certain and each cohort mixes them.
The default generator paints one fixed signature on every active lesion (contrasts.ACTIVE_*); a randomised subject
instead draws:

- per subject (``SignProfile``): how often each sign shows on an active lesion, how strong it is on average, the
  share of active lesions with no visible sign at all, and the share of inactive lesions that mimic some signs;
- per lesion and session (``draw_signs``): whether each sign is present and how strong.

The label (enhancing or not) stays what the post-contrast truth says; the signs only change the non-contrast
images. All draws come from a stream of their own, so the anatomy, lesions and activity never change with them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .contrasts import ACTIVE_HALO_GAIN, ACTIVE_HALO_MM, ACTIVE_T1_HYPO_SCALE, ACTIVE_T2_CONTRAST_GAIN

#: Per subject: share of active lesions with no visible sign (enhancing, yet they look inactive).
SILENT_SHARE = (0.1, 0.4)
#: Per subject: chance that an active lesion shows each sign.
SIGN_PRESENCE = {"t2": (0.3, 0.95), "halo": (0.2, 0.9), "t1_iso": (0.3, 0.95), "margin": (0.2, 0.85)}
#: Per subject: share of inactive lesions that mimic one or two signs (at most about as strong).
MIMIC_SHARE = (0.03, 0.2)
#: Per lesion, when the sign is present: T2/FLAIR contrast gain, halo width (mm) and gain (x contrasts'), T1
#: hypointensity scale (0 iso, 1 as an inactive lesion), margin ramp width (mm, lesions' own 0.8-1.6).
T2_GAIN = (1.05, 1.5)
HALO_MM = (0.7, 3.5)
HALO_GAIN = (0.3, 1.6)
T1_HYPO_SCALE = (0.05, 0.8)
MARGIN_MM = (1.8, 4.0)


@dataclass(frozen=True)
class ActivitySigns:
    """How one lesion looks on non-contrast images in one session. The defaults are no sign at all."""

    t2_gain: float = 1.0        # T2w/FLAIR contrast (level - 1) multiplied by this
    t1_hypo_scale: float = 1.0  # T1w hypointensity (1 - level) multiplied by this (< 1: closer to iso)
    halo_mm: float = 0.0        # oedema halo width (0: none)
    halo_gain: float = 0.0      # the halo's signal change, times contrasts.ACTIVE_HALO_GAIN
    edge_mm: float | None = None  # margin ramp width (None: the lesion's own, sharp)

    @property
    def visible(self) -> bool:
        return (self.t2_gain != 1.0 or self.t1_hypo_scale != 1.0 or self.halo_mm > 0
                or self.edge_mm is not None)

    def levels(self, levels: dict[str, float]) -> dict[str, float]:
        """A lesion's levels (relative to WM) with these signs."""
        return {"FLAIR": 1 + (levels["FLAIR"] - 1) * self.t2_gain, "T2w": 1 + (levels["T2w"] - 1) * self.t2_gain,
                "T1w": 1 - (1 - levels["T1w"]) * self.t1_hypo_scale}

    def halo_gains(self) -> dict[str, float]:
        return {seq: gain * self.halo_gain for seq, gain in ACTIVE_HALO_GAIN.items()}

    def as_record(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


#: The default generator's fixed signature of every active lesion, as signs (for comparison and docs).
FIXED_SIGNS = ActivitySigns(t2_gain=ACTIVE_T2_CONTRAST_GAIN, t1_hypo_scale=ACTIVE_T1_HYPO_SCALE,
                            halo_mm=ACTIVE_HALO_MM, halo_gain=1.0)
NO_SIGNS = ActivitySigns()


@dataclass(frozen=True)
class SignProfile:
    """One subject's mix of signs: presence chances and mean strengths, silent and mimic shares."""

    silent: float
    presence: dict[str, float]
    t2_gain: float
    halo_mm: float
    halo_gain: float
    t1_hypo_scale: float
    margin_mm: float
    mimic: float


def random_sign_profile(rng: np.random.Generator) -> SignProfile:
    return SignProfile(
        silent=float(rng.uniform(*SILENT_SHARE)),
        presence={sign: float(rng.uniform(*span)) for sign, span in SIGN_PRESENCE.items()},
        t2_gain=float(rng.uniform(*T2_GAIN)), halo_mm=float(rng.uniform(*HALO_MM)),
        halo_gain=float(rng.uniform(*HALO_GAIN)), t1_hypo_scale=float(rng.uniform(*T1_HYPO_SCALE)),
        margin_mm=float(rng.uniform(*MARGIN_MM)), mimic=float(rng.uniform(*MIMIC_SHARE)),
    )


def _near(mean: float, jitter: float, span: tuple[float, float]) -> float:
    """A lesion's strength near the subject's mean (relative jitter), kept inside the span."""
    return float(np.clip(mean * (1 + jitter), *span))


def draw_signs(rng: np.random.Generator, profile: SignProfile, active: bool) -> ActivitySigns:
    """The signs of one lesion in one session. Draws the same number of values whatever the outcome, so one
    lesion's signs never shift another's."""
    u = rng.random(6)
    jitter = rng.uniform(-0.25, 0.25, 5)
    t2 = _near(profile.t2_gain, jitter[0], T2_GAIN)
    halo_mm = _near(profile.halo_mm, jitter[1], HALO_MM)
    halo_gain = _near(profile.halo_gain, jitter[2], HALO_GAIN)
    t1 = _near(profile.t1_hypo_scale, jitter[3], T1_HYPO_SCALE)
    margin = _near(profile.margin_mm, jitter[4], MARGIN_MM)
    if active:
        if u[0] < profile.silent:
            return NO_SIGNS
        present = {s: u[i] < profile.presence[s] for i, s in enumerate(("t2", "halo", "t1_iso", "margin"), 1)}
    else:
        if u[0] >= profile.mimic:
            return NO_SIGNS
        # a mimic shows one or two signs, a little weaker than active lesions of the subject
        present = {s: u[i] < 0.4 for i, s in enumerate(("t2", "halo", "t1_iso", "margin"), 1)}
        if not any(present.values()):
            present[("t2", "halo", "t1_iso", "margin")[int(u[5] * 4) % 4]] = True
        t2, halo_gain = 1 + (t2 - 1) * 0.8, halo_gain * 0.8
    return ActivitySigns(t2_gain=t2 if present["t2"] else 1.0, t1_hypo_scale=t1 if present["t1_iso"] else 1.0,
                         halo_mm=halo_mm if present["halo"] else 0.0, halo_gain=halo_gain if present["halo"] else 0.0,
                         edge_mm=margin if present["margin"] else None)
