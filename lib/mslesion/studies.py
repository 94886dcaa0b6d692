"""Sequences of a study and their companions, found from BIDS-style names in a MONAI Label datastore.

A local datastore holds flat files named ``sub-<S>_ses-<T>_<suffix>.nii.gz``; each file is one MONAI Label
image. A task asked about one image finds the other sequences it needs among the images of the same
subject and session.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from fastapi import HTTPException

FLAIR = "FLAIR"
T1 = "T1w"
T2 = "T2w"
T1_POST = "ce-gadolinium_T1w"
SEQUENCES = (FLAIR, T1, T2, T1_POST)

_NAME = re.compile(r"^sub-(?P<subject>[A-Za-z0-9]+)_ses-(?P<session>[A-Za-z0-9]+)_(?P<suffix>.+?)(\.nii(\.gz)?)?$")


class StudyError(HTTPException):
    """A request that cannot be served as asked; the server answers it with ``status`` and ``message``.

    It is an HTTPException so that, raised anywhere under a MONAI Label endpoint, it reaches the client as a
    4xx with this message instead of a 500.
    """

    def __init__(self, status: int, message: str):
        super().__init__(status_code=status, detail=message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


@dataclass(frozen=True)
class SequenceRef:
    """One image of a study: which subject, which session, which sequence."""

    subject: str
    session: str
    suffix: str

    @property
    def image_id(self) -> str:
        return f"sub-{self.subject}_ses-{self.session}_{self.suffix}"

    def companion(self, suffix: str) -> SequenceRef:
        return SequenceRef(self.subject, self.session, suffix)


def parse_image_id(image_id: str) -> SequenceRef | None:
    """The subject, session and sequence named by a BIDS-style image id or file name; None if it is not one."""
    match = _NAME.match(os.path.basename(image_id))
    if not match or match["suffix"] not in SEQUENCES:
        return None
    return SequenceRef(match["subject"], match["session"], match["suffix"])


class ImageStore(Protocol):
    """The part of a MONAI Label datastore that companion resolution needs."""

    def list_images(self) -> list[str]: ...

    def get_image_uri(self, image_id: str) -> str: ...


def naming_hint(suffix: str) -> str:
    return f"images are named sub-<subject>_ses-<session>_{suffix}.nii.gz"


def resolve_sequences(
    store: ImageStore, image_id: str, task: str, primary: str, companions: Iterable[str] = ()
) -> dict[str, str]:
    """File paths of the sequences a task needs, starting from the image the user asked about.

    Raises StudyError (404 for an unknown image, 422 for a wrong sequence or a missing companion) with a
    message that says what is wrong and how to fix it.
    """
    known = set(store.list_images())
    if image_id not in known:
        raise StudyError(404, f"Image '{image_id}' is not in the datastore; list them with GET /datastore/.")
    ref = parse_image_id(image_id)
    if ref is None:
        raise StudyError(
            422,
            f"{task} cannot tell which sequence '{image_id}' is: {naming_hint(primary)} "
            f"(suffix one of {', '.join(SEQUENCES)}). Rename the file or upload it with such an id.",
        )
    if ref.suffix != primary:
        raise StudyError(
            422,
            f"{task} needs a {primary} image, but '{image_id}' is a {ref.suffix}. "
            f"Run it on {ref.companion(primary).image_id} instead.",
        )
    paths = {primary: store.get_image_uri(image_id)}
    missing = []
    for suffix in companions:
        other = ref.companion(suffix).image_id
        if other in known:
            paths[suffix] = store.get_image_uri(other)
        else:
            missing.append(other)
    if missing:
        raise StudyError(
            422,
            f"{task} needs {', '.join(missing)} beside {image_id} (same subject and session); "
            "upload it with PUT /datastore/image?image=<id>.",
        )
    return paths


# Data key of the baseline image path; not "baseline", which is the request parameter naming a baseline image id.
BASELINE = "baseline_image"


def session_order(session: str) -> tuple:
    """BIDS sessions in visit order: numerically where they are numbers (ses-2 before ses-10), else by name."""
    return (0, int(session), session) if session.isdigit() else (1, 0, session)


def earlier_session(store: ImageStore, ref: SequenceRef) -> SequenceRef | None:
    """The same sequence at the latest session of the same subject before ``ref``'s, if the datastore has one."""
    earlier = []
    for image_id in store.list_images():
        other = parse_image_id(image_id)
        if (
            other is not None
            and other.subject == ref.subject
            and other.suffix == ref.suffix
            and session_order(other.session) < session_order(ref.session)
        ):
            earlier.append(other)
    return max(earlier, key=lambda r: session_order(r.session)) if earlier else None


def resolve_baseline(
    store: ImageStore, image_id: str, task: str, baseline_id: str | None = None, force: bool = False
) -> str:
    """Path of the baseline a follow-up is compared with: ``baseline_id`` when the request names one, else the
    same sequence at the subject's previous session (BIDS ``ses-`` order).

    A baseline of another subject is refused unless ``force``: comparing two people's brains would call every
    anatomical difference a new lesion.
    """
    ref = parse_image_id(image_id)
    if ref is None:  # resolve_sequences has already refused unnamed images; keep this function safe on its own
        raise StudyError(422, f"{task} cannot tell the subject and session of '{image_id}': {naming_hint(FLAIR)}.")
    if baseline_id:
        if baseline_id not in set(store.list_images()):
            raise StudyError(
                404, f"Baseline image '{baseline_id}' is not in the datastore; list them with GET /datastore/."
            )
        base = parse_image_id(baseline_id)
        if base is None or base.suffix != ref.suffix:
            raise StudyError(
                422, f"{task} compares {ref.suffix} with {ref.suffix}; baseline '{baseline_id}' is not a {ref.suffix}."
            )
        if baseline_id == image_id:
            raise StudyError(422, f"{task} needs a baseline from an earlier visit, not the follow-up itself.")
        if base.subject != ref.subject and not force:
            raise StudyError(
                422,
                f"Baseline '{baseline_id}' is of subject {base.subject}, the follow-up '{image_id}' of subject "
                f"{ref.subject}: new lesions can only be found between visits of the same person. Pass the same "
                'subject\'s earlier image, or params {"force_baseline": true} if the ids are wrong but the person '
                "is the same.",
            )
        return store.get_image_uri(baseline_id)
    previous = earlier_session(store, ref)
    if previous is None:
        raise StudyError(
            422,
            f"{task} needs a baseline: subject {ref.subject} has no {ref.suffix} from a session before "
            f"ses-{ref.session}. Upload the earlier visit as sub-{ref.subject}_ses-<earlier>_{ref.suffix}.nii.gz, "
            'or name one with params {"baseline": "<image id>"}.',
        )
    return store.get_image_uri(previous.image_id)
