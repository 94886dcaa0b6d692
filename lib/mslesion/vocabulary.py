"""The label vocabulary: which value means what on which kind of image, declared once.

Every place that names or numbers a label reads it from here: /info's app-level and per-model labels, the answers'
``label_names``, the save check, training and DICOM SEG. The GUIs number segments by order, not by value (3D Slicer's
MONAI Label module gives the i-th segment of the app-level list value i + 1 when it saves; OHIF sorts the names), so
the app-level list is ordered so that a FLAIR's segments come out as their stored values, and a saved label's
``label_info`` (segment names and the values they were exported with) is mapped back to these values by name.

No fastapi here: the training subprocess, the datastore and the tests import it as plain data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

# Sequences (BIDS suffixes) of a study; studies, phantoms and the server read them from here.
FLAIR = "FLAIR"
T1 = "T1w"
T2 = "T2w"
T1_POST = "ce-gadolinium_T1w"
SEQUENCES: tuple[str, ...] = (FLAIR, T1, T2, T1_POST)

MS_LESION = "MS lesion"
NEW_MS_LESION = "new MS lesion"
ENHANCING_LESION = "enhancing lesion"

# Values a saved label of each image kind holds (0 is background). New lesions are lesions too.
VOCABULARY: dict[str, dict[str, int]] = {
    FLAIR: {MS_LESION: 1, NEW_MS_LESION: 2},
    T1_POST: {ENHANCING_LESION: 1},
}

# /info's app-level labels. Slicer creates one segment per name in this order and exports segment i as value i + 1:
# on a FLAIR that is exactly 1 = MS lesion, 2 = new MS lesion; on a post-contrast T1 the saved label_info maps
# "enhancing lesion" back to 1 (see remap_by_label_info).
APP_LABELS: list[str] = [MS_LESION, NEW_MS_LESION, ENHANCING_LESION]

# Per-model labels (what each model's answer holds), by task name.
MODEL_LABELS: dict[str, dict[str, int]] = {
    "flair_lesion": {MS_LESION: 1},
    "new_lesion": {MS_LESION: 1, NEW_MS_LESION: 2},
    "enhancement": {ENHANCING_LESION: 1},
    "enhancement_prediction": {f"{MS_LESION} (in a slice predicted to enhance)": 1},
}

# Names earlier msapp versions gave segments (a Slicer scene saved then still carries them).
ALIASES = {"lesion": MS_LESION, "new lesion": NEW_MS_LESION, "enhancing": ENHANCING_LESION}
# Segments the GUIs add that are never label content.
IGNORED_SEGMENTS = {"background", "foreground_scribbles", "background_scribbles"}

# A saved follow-up label's info flag: new lesions were looked for, even where none is marked (new_lesion's trainer).
NEW_LESIONS_MARKED = "new_lesions_marked"

_NOTE = re.compile(r"^(?P<name>.+?)\s*\((?P<note>[^()]*)\)\s*$")


def model_labels(task: str) -> dict[str, int]:
    return dict(MODEL_LABELS[task])


def allowed_values(suffix: str | None) -> set[int] | None:
    """Values a label of this image kind may hold; None for an image whose kind the vocabulary does not cover."""
    names = VOCABULARY.get(suffix or "")
    return {0, *names.values()} if names is not None else None


def canonical_name(segment: str) -> str | None:
    """The vocabulary name a segment stands for: exact, any case, an earlier alias, or the name followed by a note
    in brackets (enhancement_prediction names its segment "MS lesion (predicted enhancing, p = 0.83)"); None if it
    is none of them."""
    text = " ".join(str(segment).split())
    match = _NOTE.match(text)
    candidates = [text] + ([match["name"]] if match else [])
    known = {name.lower(): name for names in VOCABULARY.values() for name in names}
    for candidate in candidates:
        lowered = candidate.lower()
        if lowered in known:
            return known[lowered]
        if lowered in ALIASES:
            return ALIASES[lowered]
    return None


def kind_of(name: str) -> str | None:
    """The image kind whose vocabulary holds ``name``."""
    return next((suffix for suffix, names in VOCABULARY.items() if name in names), None)


def answer_segment_name(probability: float, enhancing: bool) -> str:
    """enhancement_prediction's per-answer segment name: the decision and probability where a GUI shows names."""
    decision = "predicted enhancing" if enhancing else "predicted not enhancing"
    return f"{MS_LESION} ({decision}, p = {probability:.2f})"


class SegmentProblem(ValueError):
    """A saved label's segments that cannot be stored on this image; the message names them and what is allowed."""


def _file_value(entry: dict, position: int) -> int:
    for key in ("idx", "id", "value"):
        value = entry.get(key)
        if isinstance(value, int | float | str) and str(value).strip().lstrip("-").isdigit():
            return int(value)
    return position + 1


def remap_by_label_info(data: np.ndarray, label_info: Iterable[dict], suffix: str | None) -> np.ndarray:
    """The label's voxels renumbered from the values the GUI exported each segment with to the vocabulary's values.

    ``label_info`` is what Slicer sends with Submit Label: one ``{"name", "idx"}`` per exported segment (idx is the
    value in the file; without one, the segment's position + 1). A segment that holds voxels and whose name is not in
    this image kind's vocabulary raises SegmentProblem naming it and the allowed names; empty ones (Slicer exports
    every segment it created from /info) are ignored. Values no entry describes are left as they are for the
    value check that follows.
    """
    names = VOCABULARY.get(suffix or "")
    if names is None:
        return data
    present = {int(v) for v in np.unique(data)}
    table = np.arange(max(present | {0}) + 1, dtype=np.int64)
    unknown, foreign, described = [], [], set()
    for position, entry in enumerate(label_info):
        if not isinstance(entry, dict):
            continue
        segment = str(entry.get("name", ""))
        value = _file_value(entry, position)
        if segment.strip().lower() in IGNORED_SEGMENTS or value <= 0:
            continue
        described.add(value)
        holds = value in present
        name = canonical_name(segment)
        if name is None or name not in names:
            if holds:
                (foreign if name is not None else unknown).append((segment, name))
            continue
        if value < len(table):
            table[value] = names[name]
    allowed = ", ".join(f'"{n}" ({v})' for n, v in names.items())
    problems = []
    if unknown:
        shown = ", ".join(f'"{s}"' for s, _ in unknown)
        problems.append(f"segment(s) {shown} are not label names this server knows")
    if foreign:
        shown = ", ".join(f'"{s}" (a {kind_of(n)} label)' for s, n in foreign)
        problems.append(f"segment(s) {shown} do not belong on a {suffix}")
    if problems:
        raise SegmentProblem(
            f"{'; '.join(problems)}. A {suffix} label may hold only the segments {allowed}. Rename the segment in "
            "the Segment Editor to one of these names (or delete it) and submit again."
        )
    if not described or np.array_equal(table, np.arange(len(table))):
        return data
    return table[data.astype(np.int64)].astype(np.uint8)
