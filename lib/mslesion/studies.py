"""Sequences of a study and their companions, through one resolver interface for every kind of datastore.

A task asked about one image finds the other sequences it needs among the images of the same subject and
session (and, for longitudinal tasks, the same sequence at the subject's previous session). What an image *is*
(subject, session, sequence) comes from a ``Catalogue``:

- ``BidsCatalogue``: a local datastore of flat files named ``sub-<S>_ses-<T>_<suffix>.nii.gz``;
- ``mslesion.dicom.catalogue.SeriesCatalogue``: a DICOMweb server, where the subject is the PatientID, the
  session the study (ordered by StudyDate/StudyTime) and the sequence is matched from the SeriesDescription.

``resolve_sequences``, ``resolve_baseline`` and ``earlier_session`` work on either; a datastore that has its own
catalogue exposes it as a ``catalogue`` attribute, any other store is read by its BIDS names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from .vocabulary import FLAIR, SEQUENCES, T1, T1_POST, T2  # noqa: F401  (re-exported: the study vocabulary)

_NAME = re.compile(r"^sub-(?P<subject>[A-Za-z0-9]+)_ses-(?P<session>[A-Za-z0-9]+)_(?P<suffix>.+?)(\.nii(\.gz)?)?$")


class StudyError(Exception):
    """A request that cannot be served as asked; the server answers it with ``status`` and ``message``.

    A plain exception, so that the ML core, the training subprocess and the tests need no web framework: the
    server maps it to its HTTP answer (``{"detail": message}`` with ``status``) in one place,
    mslesion.server.errors, for msapp's routes and MONAI Label's alike.
    """

    def __init__(self, status: int, message: str):
        super().__init__(status, message)
        self.status = status
        self.message = message

    @property
    def status_code(self) -> int:
        """The HTTP name of ``status``."""
        return self.status

    @property
    def detail(self) -> str:
        """The HTTP name of ``message`` (the ``detail`` of the JSON answer)."""
        return self.message

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


class Catalogue(Protocol):
    """What companion resolution needs to know about a datastore's images, and how to word what is missing."""

    def image_ids(self) -> set[str]:
        """Every image id of the datastore."""

    def refs(self) -> dict[str, SequenceRef]:
        """Subject, session and sequence of every image whose sequence is known, by image id."""

    def image_uri(self, image_id: str) -> str:
        """Local file path of an image (fetched first where the datastore is remote)."""

    def image_of(self, ref: SequenceRef) -> str | None:
        """Id of the image that is ``ref``, if the datastore has it."""

    def has(self, image_id: str) -> bool:
        """Whether the image exists (a remote catalogue may look again before saying no: a series just stored)."""

    def ref(self, image_id: str) -> SequenceRef | None:
        """Subject, session and sequence of one image, if known."""

    def describe(self, ref: SequenceRef) -> str:
        """How to name the image ``ref`` to a user (its id when it is there, what to provide when it is not)."""

    def unknown_sequence_message(self, image_id: str, task: str, primary: str) -> str: ...

    def missing_companions_message(self, task: str, image_id: str, missing: list[SequenceRef]) -> str: ...

    def no_baseline_message(self, task: str, ref: SequenceRef) -> str: ...


class BidsCatalogue:
    """A local datastore read by its BIDS-style image ids; the ids are the references themselves."""

    def __init__(self, store: ImageStore):
        self.store = store
        self._ids: set[str] | None = None

    def image_ids(self) -> set[str]:
        if self._ids is None:
            self._ids = set(self.store.list_images())
        return self._ids

    def refs(self) -> dict[str, SequenceRef]:
        return {image_id: ref for image_id in self.image_ids() if (ref := parse_image_id(image_id)) is not None}

    def ref(self, image_id: str) -> SequenceRef | None:
        return parse_image_id(image_id)

    def has(self, image_id: str) -> bool:
        return image_id in self.image_ids()

    def image_uri(self, image_id: str) -> str:
        return self.store.get_image_uri(image_id)

    def image_of(self, ref: SequenceRef) -> str | None:
        return ref.image_id if ref.image_id in self.image_ids() else None

    def describe(self, ref: SequenceRef) -> str:
        return ref.image_id

    def unknown_sequence_message(self, image_id: str, task: str, primary: str) -> str:
        return (
            f"{task} cannot tell which sequence '{image_id}' is: {naming_hint(primary)} "
            f"(suffix one of {', '.join(SEQUENCES)}). Rename the file or upload it with such an id."
        )

    def missing_companions_message(self, task: str, image_id: str, missing: list[SequenceRef]) -> str:
        return (
            f"{task} needs {', '.join(m.image_id for m in missing)} beside {image_id} (same subject and session): "
            "copy the file as <id>.nii.gz into the server's studies folder, or upload it with "
            "PUT /datastore/image?image=<id>."
        )

    def no_baseline_message(self, task: str, ref: SequenceRef) -> str:
        return (
            f"{task} needs a baseline: subject {ref.subject} has no {ref.suffix} from a session before "
            f"ses-{ref.session}. Upload the earlier visit as sub-{ref.subject}_ses-<earlier>_{ref.suffix}.nii.gz, "
            'or name one with params {"baseline": "<image id>"}.'
        )


def catalogue_of(store) -> Catalogue:
    """The store's own catalogue (a DICOMweb datastore has one), else its images read by BIDS names."""
    own = getattr(store, "catalogue", None)
    return own if own is not None else BidsCatalogue(store)




def resolve_sequences(
    store: ImageStore, image_id: str, task: str, primary: str, companions: Iterable[str] = ()
) -> dict[str, str]:
    """File paths of the sequences a task needs, starting from the image the user asked about.

    Raises StudyError (404 for an unknown image, 422 for a wrong sequence or a missing companion) with a
    message that says what is wrong and how to fix it.
    """
    catalogue = catalogue_of(store)
    if not catalogue.has(image_id):
        raise StudyError(404, f"Image '{image_id}' is not in the datastore; list them with GET /datastore/.")
    ref = catalogue.ref(image_id)
    if ref is None:
        raise StudyError(422, catalogue.unknown_sequence_message(image_id, task, primary))
    if ref.suffix != primary:
        raise StudyError(
            422,
            f"{task} needs a {primary} image, but '{image_id}' is a {ref.suffix}. "
            f"Run it on {catalogue.describe(ref.companion(primary))} instead.",
        )
    found = {primary: image_id}
    missing = []
    for suffix in companions:
        other = catalogue.image_of(ref.companion(suffix))
        if other is None:
            missing.append(ref.companion(suffix))
        else:
            found[suffix] = other
    if missing:
        raise StudyError(422, catalogue.missing_companions_message(task, image_id, missing))
    return {suffix: catalogue.image_uri(other) for suffix, other in found.items()}


# Data key of the baseline image path; not "baseline", which is the request parameter naming a baseline image id.
BASELINE = "baseline_image"


def session_order(session: str) -> tuple:
    """BIDS sessions in visit order: numerically where they are numbers (ses-2 before ses-10), else by name."""
    return (0, int(session), session) if session.isdigit() else (1, 0, session)


def earlier_session(store: ImageStore, ref: SequenceRef) -> SequenceRef | None:
    """The same sequence at the latest session of the same subject before ``ref``'s, if the datastore has one."""
    earlier = [
        other
        for other in catalogue_of(store).refs().values()
        if other.subject == ref.subject
        and other.suffix == ref.suffix
        and session_order(other.session) < session_order(ref.session)
    ]
    return max(earlier, key=lambda r: session_order(r.session)) if earlier else None


def resolve_baseline(
    store: ImageStore, image_id: str, task: str, baseline_id: str | None = None, force: bool = False
) -> str:
    """Path of the baseline a follow-up is compared with: ``baseline_id`` when the request names one, else the
    same sequence at the subject's previous session (BIDS ``ses-`` order).

    A baseline of another subject is refused unless ``force``: comparing two people's brains would call every
    anatomical difference a new lesion.
    """
    catalogue = catalogue_of(store)
    ref = catalogue.ref(image_id)
    if ref is None:  # resolve_sequences has already refused unnamed images; keep this function safe on its own
        raise StudyError(422, catalogue.unknown_sequence_message(image_id, task, FLAIR))
    if baseline_id:
        if not catalogue.has(baseline_id):
            raise StudyError(
                404, f"Baseline image '{baseline_id}' is not in the datastore; list them with GET /datastore/."
            )
        base = catalogue.ref(baseline_id)
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
        return catalogue.image_uri(baseline_id)
    previous = earlier_session(store, ref)
    previous_id = catalogue.image_of(previous) if previous is not None else None
    if previous_id is None:
        raise StudyError(422, catalogue.no_baseline_message(task, ref))
    return catalogue.image_uri(previous_id)
