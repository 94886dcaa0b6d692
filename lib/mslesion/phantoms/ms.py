"""The MS lesion model: dissemination in space, longitudinal evolution and gadolinium activity."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .activity import ActivitySigns, SignProfile, draw_signs, random_sign_profile
from .anatomy import Anatomy
from .contrasts import ACTIVE_HALO_GAIN, ACTIVE_HALO_MM, ENHANCEMENT_RANGE, active_levels, lesion_levels
from .deformation import SubjectWarp
from .lesions import Blob, clear_of, ellipsoid_radii, orthonormal_axes, place, tissue_at

#: Where MS lesions are placed (probabilities of the location classes).
LOCATION_WEIGHTS = {"periventricular": 0.40, "juxtacortical": 0.25, "deep_wm": 0.25, "infratentorial": 0.10}
#: Lesions at baseline, and lesion volumes (log-uniform, mL) with per-location caps.
LESION_COUNT = (5, 30)
VOLUME_ML = (0.01, 1.5)
MAX_VOLUME_ML = {"juxtacortical": 0.5, "infratentorial": 0.5}
#: A lesion is placed overlapping an earlier one (confluent) with this probability.
CONFLUENT_PROB = 0.2
#: Chronic lesions that are strongly T1-hypointense.
BLACK_HOLE_PROB = 0.25
#: Per follow-up: chance that an old lesion enlarges and by how much (radius factor).
ENLARGE_PROB = 0.15
ENLARGE_FACTOR = (1.15, 1.4)
#: Per follow-up: probabilities of 0, 1, 2, 3, 4 new lesions; new lesions keep this gap (mm) to others.
NEW_LESION_PROBS = (0.15, 0.30, 0.25, 0.20, 0.10)
NEW_LESION_GAP_MM = 3.0
#: Activity: at baseline a session has 1-3 enhancing lesions with this probability; at follow-up each new
#: lesion enhances with NEW_ACTIVE_PROB and one old lesion re-activates with OLD_REACTIVATION_PROB.
BASELINE_ACTIVE_PROB = 0.5
BASELINE_ACTIVE_COUNT = (1, 3)
NEW_ACTIVE_PROB = 0.6
OLD_REACTIVATION_PROB = 0.1
#: Share of enhancing lesions with ring (vs nodular) enhancement; smaller lesions always enhance nodular.
RING_PROB = 0.25
RING_MIN_RADIUS_MM = 2.5
#: The "ms_active" cohort (MS in relapse): every session makes about this share of its lesions enhance (at least
#: one). Training cohorts for the enhancement U-Net use it: at the natural rate (~1 enhancing lesion per session,
#: many sessions none) 76 training studies hold too few enhancing lesions to generalise from.
ACTIVE_COHORT_SHARE = 0.25
#: The "ms_relapse" cohort (a relapse between visits): every follow-up brings this many new lesions (uniform) and
#: old lesions enlarge with RELAPSE_ENLARGE_PROB. Training cohorts for the new-lesion U-Net use it: at the natural
#: rate (~1.8 new lesions per follow-up) 72 training studies hold ~130 new lesions, and enlarging old lesions (the
#: look-alikes the model must leave alone: label 1, not 2) are rare too.
RELAPSE_NEW_LESIONS = (3, 8)
RELAPSE_ENLARGE_PROB = 0.3


@dataclass
class MSLesion:
    """A lesion's state across sessions."""

    id: int
    location: str
    centre: np.ndarray  # subject mm
    axes: np.ndarray
    radii: np.ndarray
    levels: dict[str, float]
    black_hole: dict[str, float] | None  # its levels once chronic, if it is a T1 black hole
    pattern: str
    enhancement: float
    edge_mm: float
    born: int  # session index where it first appears
    confluent_with: int | None = None

    def blob(self, session: int, active: bool, enlarging: bool, signs: ActivitySigns | None = None) -> Blob:
        """How the lesion is painted in one session: with the fixed signature of activity, or (randomised
        generator) with the ``signs`` drawn for this lesion and session."""
        new = session == self.born and session > 0
        chronic = not active and not new  # baseline lesions are old already
        levels = active_levels(self.levels) if active else dict(self.levels)
        if self.black_hole is not None and chronic:
            levels = dict(self.black_hole)
        edge_mm = self.edge_mm
        if signs is not None:  # the drawn signs replace the fixed signature
            chronic_levels = self.black_hole if self.black_hole is not None and chronic else self.levels
            levels = signs.levels(chronic_levels)
            edge_mm = signs.edge_mm if signs.edge_mm is not None else self.edge_mm
        pattern = self.pattern if float(np.exp(np.mean(np.log(self.radii)))) >= RING_MIN_RADIUS_MM else "nodular"
        record = {"id": self.id, "kind": "ms", "location": self.location, "enhancing": active, "new": new,
                  "enlarging": enlarging, "black_hole": self.black_hole is not None and chronic,
                  "enhancement": pattern if active else None, "confluent_with": self.confluent_with,
                  "radii_mm": [round(float(r), 2) for r in self.radii]}
        if signs is not None:
            record["signs"] = signs.as_record()
        return Blob(kind="ms", location=self.location, centre=self.centre, axes=self.axes, radii=self.radii,
                    levels=levels, edge_mm=edge_mm, flair_label=2 if new else 1, ce_label=int(active),
                    enhancement=self.enhancement if active else 0.0, pattern=pattern if active else None,
                    record=record)

    def halo(self, signs: ActivitySigns | None = None) -> Blob:
        """The faint perilesional oedema halo of an active lesion (no label): fixed, or as wide and strong as the
        drawn ``signs`` say."""
        if signs is not None:
            return Blob(kind="halo", location=self.location, centre=self.centre, axes=self.axes,
                        radii=self.radii + signs.halo_mm, gains=signs.halo_gains(), edge_mm=2 * signs.halo_mm,
                        flair_label=0)
        return Blob(kind="halo", location=self.location, centre=self.centre, axes=self.axes,
                    radii=self.radii + ACTIVE_HALO_MM, gains=dict(ACTIVE_HALO_GAIN), edge_mm=2 * ACTIVE_HALO_MM,
                    flair_label=0)


def _new_lesion(rng: np.random.Generator, anat: Anatomy, warp: SubjectWarp, lesions: list[MSLesion],
                session: int, avoid: list[MSLesion] | None) -> MSLesion | None:
    """Draw one lesion: location class, size, shape, orientation and appearance."""
    lesion_id = len(lesions) + 1
    parent = None
    # confluence: a lesion overlapping one earlier, unconfluent lesion (pairs, not chains)
    parents = [les for les in lesions if les.confluent_with is None
               and not any(o.confluent_with == les.id for o in lesions)]
    if avoid is None and parents and rng.random() < CONFLUENT_PROB:
        parent = parents[int(rng.integers(len(parents)))]
        location = parent.location
    else:
        location = str(rng.choice(list(LOCATION_WEIGHTS), p=list(LOCATION_WEIGHTS.values())))
    lo, hi = VOLUME_ML[0], min(VOLUME_ML[1], MAX_VOLUME_ML.get(location, VOLUME_ML[1]))
    volume = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    elongation = rng.uniform(1.3, 2.2) if location == "periventricular" else rng.uniform(1.0, 1.8)
    radii = np.clip(ellipsoid_radii(rng, volume, elongation), 1.2, 9.0)
    reach = float(np.max(radii))

    if parent is not None:
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        centre = parent.centre + direction * float(np.mean(parent.radii)) * rng.uniform(0.7, 1.1)
        if tissue_at(anat, warp, centre) < 0.6:
            return None
    else:
        accept = None
        if avoid is not None:  # a new lesion at follow-up: keep it apart so that label 2 is exactly its core
            others = [Blob(kind="ms", location=o.location, centre=o.centre, axes=o.axes, radii=o.radii)
                      for o in avoid]

            def accept(c: np.ndarray) -> bool:
                return clear_of(c, reach, others, NEW_LESION_GAP_MM)

        centre = place(rng, anat, warp, location, accept=accept)
        if centre is None:
            return None
    long_axis = None
    if location == "periventricular":
        outward_t = anat.outward(warp.to_template(centre[None, :]))[0]
        long_axis = np.linalg.solve(warp.affine[:3, :3], outward_t)  # template direction -> subject
    axes = orthonormal_axes(rng, long_axis)
    pattern = "ring" if rng.random() < RING_PROB else "nodular"
    return MSLesion(id=lesion_id, location=location, centre=centre, axes=axes, radii=radii,
                    levels=lesion_levels(rng, "ms"),
                    black_hole=lesion_levels(rng, "black_hole") if rng.random() < BLACK_HOLE_PROB else None,
                    pattern=pattern, enhancement=float(rng.uniform(*ENHANCEMENT_RANGE[pattern])),
                    edge_mm=float(rng.uniform(0.8, 1.6)), born=session,
                    confluent_with=parent.id if parent is not None else None)


def ms_sessions(rng: np.random.Generator, anat: Anatomy, warp: SubjectWarp, n_sessions: int,
                signs_rng: np.random.Generator | None = None, active_share: float | None = None,
                relapse: bool = False) -> list[list[Blob]]:
    """Blobs (painting order) of every session of one MS subject. With ``signs_rng`` (the randomised generator)
    the non-contrast signs of activity are drawn per subject and per lesion (activity.py) from that stream; the
    lesions and which of them enhance come from ``rng`` as without it. ``active_share``: each lesion enhances
    with this probability in every session (at least one per session) instead of the natural course. ``relapse``:
    every follow-up brings RELAPSE_NEW_LESIONS new lesions and more old ones enlarge (RELAPSE_ENLARGE_PROB)."""
    profile: SignProfile | None = random_sign_profile(signs_rng) if signs_rng is not None else None
    lesions: list[MSLesion] = []
    target = int(rng.integers(LESION_COUNT[0], LESION_COUNT[1] + 1))
    attempts = 0
    while len(lesions) < target and attempts < 4 * target:
        attempts += 1
        les = _new_lesion(rng, anat, warp, lesions, 0, avoid=None)
        if les is not None:
            lesions.append(les)

    enlarge_prob = RELAPSE_ENLARGE_PROB if relapse else ENLARGE_PROB
    out = []
    for session in range(n_sessions):
        enlarging: set[int] = set()
        if session > 0:
            for i, les in enumerate(lesions):
                if rng.random() < enlarge_prob:
                    lesions[i] = replace(les, radii=les.radii * rng.uniform(*ENLARGE_FACTOR))
                    enlarging.add(les.id)
            n_new = (int(rng.integers(RELAPSE_NEW_LESIONS[0], RELAPSE_NEW_LESIONS[1] + 1)) if relapse
                     else int(rng.choice(len(NEW_LESION_PROBS), p=NEW_LESION_PROBS)))
            for _ in range(4 * n_new):
                if sum(les.born == session for les in lesions) >= n_new:
                    break
                les = _new_lesion(rng, anat, warp, lesions, session, avoid=lesions)
                if les is not None:
                    lesions.append(les)
        active = (_choose_active(rng, lesions, session) if active_share is None
                  else _choose_share(rng, lesions, active_share))
        if profile is None:
            halos = [les.halo() for les in lesions if les.id in active]
            blobs = [les.blob(session, les.id in active, les.id in enlarging) for les in lesions]
        else:
            signs = {les.id: draw_signs(signs_rng, profile, les.id in active) for les in lesions}
            halos = [les.halo(signs[les.id]) for les in lesions if signs[les.id].halo_mm > 0]
            blobs = [les.blob(session, les.id in active, les.id in enlarging, signs[les.id]) for les in lesions]
        out.append(halos + blobs)
    return out


def _choose_share(rng: np.random.Generator, lesions: list[MSLesion], share: float) -> set[int]:
    """Each lesion enhances with probability ``share``; at least one does."""
    active = {les.id for les in lesions if rng.random() < share}
    return active or ({int(rng.choice([les.id for les in lesions]))} if lesions else set())


def _choose_active(rng: np.random.Generator, lesions: list[MSLesion], session: int) -> set[int]:
    """Which lesions enhance in this session (some sessions none)."""
    if session == 0:
        if not lesions or rng.random() >= BASELINE_ACTIVE_PROB:
            return set()
        n = min(len(lesions), int(rng.integers(BASELINE_ACTIVE_COUNT[0], BASELINE_ACTIVE_COUNT[1] + 1)))
        return {int(i) for i in rng.choice([les.id for les in lesions], size=n, replace=False)}
    active = {les.id for les in lesions if les.born == session and rng.random() < NEW_ACTIVE_PROB}
    old = [les.id for les in lesions if les.born < session]
    if old and rng.random() < OLD_REACTIVATION_PROB:
        active.add(int(rng.choice(old)))
    return active
