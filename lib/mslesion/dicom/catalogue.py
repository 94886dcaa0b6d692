"""Which sequence each DICOM series is, from its SeriesDescription, and which series belong together.

The DICOMweb side of ``mslesion.studies.Catalogue``: a series' subject is its PatientID, its session its study,
its sequence the first pattern its SeriesDescription matches. Sessions are named by the study's date and time
(``YYYYMMDDhhmmss``), so visits sort in time order like numbered BIDS sessions; each series also has a BIDS-style
alias (``sub-<patient>_ses-<datetime>_<suffix>``), which is what the local cache calls its files, so the training
code that reads BIDS names reads DICOM studies unchanged.

Patterns are case-insensitive regular expressions tried in order (post-contrast T1 first: "T1 POST" also
matches the plain T1 patterns; FLAIR before T2: "T2 FLAIR" also matches T2). Override them with
``--conf sequence_patterns '{"FLAIR": ["my flair name"], ...}'`` (a JSON object; sequences not named keep the
defaults).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass

import requests

from ..studies import FLAIR, T1, T1_POST, T2, SequenceRef, StudyError, parse_image_id

_NOT_ALNUM = r"(?<![a-z0-9])"  # token start: "t1_mprage" and "AX T1" both hold the token t1


def _word(text: str) -> str:
    """``text`` as a whole token: not inside a longer name, whatever separates it ('_', ' ', '-')."""
    return rf"(?<![a-z0-9]){text}(?![a-z0-9])"


_CONTRAST = rf"(post|gad|{_word('gd')}|\+ ?c\b|c\+|contrast|{_word('ce')})"
DEFAULT_PATTERNS: dict[str, list[str]] = {
    T1_POST: [_NOT_ALNUM + r"t1.*" + _CONTRAST, _CONTRAST + r".*" + _NOT_ALNUM + r"t1", r"mprage.*" + _CONTRAST],
    FLAIR: [r"flair", r"dark[ _-]?fluid", _word("tirm")],
    T2: [_NOT_ALNUM + r"t2(?![a-z0-9*])", _NOT_ALNUM + r"t2w", _word("tse") + r"(?!.*t1)"],
    T1: [_NOT_ALNUM + r"t1(?![0-9])", r"mp-?rage", _word("spgr"), _word("fspgr"), r"bravo", _word("vibe"),
         _word("tfe")],
}
ORDER = (T1_POST, FLAIR, T2, T1)


def load_patterns(conf_value: str | None) -> dict[str, list[str]]:
    """Default patterns, with the sequences named in a JSON ``--conf sequence_patterns`` value replaced."""
    patterns = {k: list(v) for k, v in DEFAULT_PATTERNS.items()}
    if not conf_value:
        return patterns
    try:
        given = json.loads(conf_value)
    except ValueError as error:
        raise ValueError(f"--conf sequence_patterns is not JSON: {error}") from error
    if not isinstance(given, dict):
        raise ValueError("--conf sequence_patterns must be a JSON object of sequence -> [regex, ...]")
    for sequence, value in given.items():
        if sequence not in DEFAULT_PATTERNS:
            raise ValueError(f"--conf sequence_patterns: unknown sequence {sequence!r}; use {', '.join(ORDER)}")
        value = [value] if isinstance(value, str) else value
        for pattern in value:
            re.compile(pattern)  # a bad regex fails at start-up, not on a request
        patterns[sequence] = list(value)
    return patterns


def match_sequence(description: str, patterns: dict[str, list[str]]) -> str | None:
    text = (description or "").lower()
    for sequence in ORDER:
        if any(re.search(p, text, re.IGNORECASE) for p in patterns.get(sequence, ())):
            return sequence
    return None


def unreachable(url: str, error: Exception) -> StudyError:
    return StudyError(
        503,
        f"The DICOMweb server {url} did not answer ({type(error).__name__}: {error}). Check that it runs and that "
        "--studies names its DICOMweb root (Orthanc: http://host:8042/dicom-web).",
    )


def _token(value: str, fallback: str) -> str:
    token = re.sub(r"[^A-Za-z0-9]", "", value or "")
    return token or fallback


@dataclass(frozen=True)
class SeriesInfo:
    series_uid: str
    study_uid: str
    patient_id: str
    study_date: str
    study_time: str
    description: str
    modality: str

    @property
    def session(self) -> str:
        """The study's date and time as digits (visit order), e.g. 20240115093000."""
        time_digits = re.sub(r"\D", "", (self.study_time or "").split(".")[0]).ljust(6, "0")[:6]
        return (re.sub(r"\D", "", self.study_date or "") or "00000000") + time_digits

    def info(self) -> dict[str, str]:
        return {
            "SeriesInstanceUID": self.series_uid, "StudyInstanceUID": self.study_uid, "PatientID": self.patient_id,
            "StudyDate": self.study_date, "StudyTime": self.study_time, "SeriesDescription": self.description,
            "Modality": self.modality,
        }


def _value(entry: dict, tag: str) -> str:
    values = entry.get(tag, {}).get("Value") or [""]
    first = values[0]
    if isinstance(first, dict):  # person names come as {"Alphabetic": ...}
        first = first.get("Alphabetic", "")
    return str(first)


class SeriesCatalogue:
    """The series of a DICOMweb server (QIDO-RS), their sequences and studies; re-read after ``ttl`` seconds."""

    FIELDS = ["0008103E", "00080020", "00080030", "00100020", "0020000D", "00080060"]

    def __init__(self, client, patterns: dict[str, list[str]] | None = None, search_filter: dict | None = None,
                 ttl: float = 2.0, url: str = ""):
        self.client = client
        self.patterns = patterns or load_patterns(None)
        self.search_filter = dict(search_filter if search_filter is not None else {"Modality": "MR"})
        self.ttl = ttl
        self.url = url or getattr(client, "base_url", "")
        self._lock = threading.Lock()
        self._series: dict[str, SeriesInfo] = {}
        self._read_at = 0.0

    # -- reading the server -------------------------------------------------------------------------------------

    def series(self) -> dict[str, SeriesInfo]:
        with self._lock:
            if time.monotonic() - self._read_at > self.ttl:
                try:
                    found = self.client.search_for_series(search_filters=self.search_filter, fields=self.FIELDS)
                except requests.RequestException as error:
                    raise unreachable(self.url, error) from error
                series = {}
                for entry in found:
                    info = SeriesInfo(
                        _value(entry, "0020000E"), _value(entry, "0020000D"), _value(entry, "00100020"),
                        _value(entry, "00080020"), _value(entry, "00080030"), _value(entry, "0008103E"),
                        _value(entry, "00080060"),
                    )
                    if info.series_uid:
                        series[info.series_uid] = info
                self._series, self._read_at = series, time.monotonic()
            return self._series

    def has(self, series_uid: str) -> bool:
        """Whether the server has the series; an id not seen yet makes the list be read again (a new series)."""
        if series_uid in self.series():
            return True
        self.invalidate()
        return series_uid in self.series()

    def invalidate(self) -> None:
        with self._lock:
            self._read_at = 0.0

    # -- Catalogue ------------------------------------------------------------------------------------------------

    def image_ids(self) -> set[str]:
        return set(self.series())

    def sequence_of(self, info: SeriesInfo) -> str | None:
        return match_sequence(info.description, self.patterns)

    def ref(self, image_id: str) -> SequenceRef | None:
        info = self.series().get(image_id)
        if info is None:
            alias = parse_image_id(image_id)
            return alias if alias is not None and self.image_of(alias) else None
        sequence = self.sequence_of(info)
        if sequence is None:
            return None
        return SequenceRef(_token(info.patient_id, "unknown"), info.session, sequence)

    def refs(self) -> dict[str, SequenceRef]:
        return {uid: ref for uid in self.series() if (ref := self.ref(uid)) is not None}

    def image_of(self, ref: SequenceRef) -> str | None:
        """The series that is ``ref``; the newest by UID order if a study holds two (e.g. a repeated FLAIR)."""
        matches = [uid for uid, other in self.refs().items() if other == ref]
        return sorted(matches)[-1] if matches else None

    def alias(self, image_id: str) -> str | None:
        """The BIDS-style name of a series (what the local cache calls its files)."""
        ref = self.ref(image_id)
        return ref.image_id if ref is not None else None

    def resolve(self, image_id: str) -> str | None:
        """A series UID from a series UID or a BIDS alias (what the cache and the training code call it)."""
        alias = parse_image_id(image_id)
        if alias is not None:
            return self.image_of(alias)
        return image_id if self.has(image_id) else None

    def image_uri(self, image_id: str) -> str:
        raise NotImplementedError("the datastore fetches images; use DicomWebDatastore.catalogue")

    # -- wording ---------------------------------------------------------------------------------------------------

    def _study_of(self, ref: SequenceRef) -> str:
        for uid, other in self.refs().items():
            if other.subject == ref.subject and other.session == ref.session:
                info = self.series()[uid]
                return f"study {info.study_uid} of patient {info.patient_id} ({info.study_date})"
        return f"the study of patient {ref.subject} on {ref.session[:8]}"

    def _patterns_text(self, sequence: str) -> str:
        return " or ".join(f"/{p}/" for p in self.patterns.get(sequence, ()))

    def describe(self, ref: SequenceRef) -> str:
        uid = self.image_of(ref)
        if uid is not None:
            return f"series {uid} ('{self.series()[uid].description}')"
        return f"a {ref.suffix} series of {self._study_of(ref)} (none there: no SeriesDescription matches " \
               f"{self._patterns_text(ref.suffix)})"

    def unknown_sequence_message(self, image_id: str, task: str, primary: str) -> str:
        info = self.series().get(image_id)
        description = info.description if info else ""
        listed = "; ".join(f"{seq}: {self._patterns_text(seq)}" for seq in ORDER)
        return (
            f"{task} cannot tell which sequence series {image_id} is: its SeriesDescription '{description}' matches "
            f"none of the sequence patterns ({listed}; case-insensitive regular expressions, tried in this order). "
            f"Open the {primary} series of the study, or add a pattern with --conf sequence_patterns "
            f"'{{\"{primary}\": [\"<regex>\"]}}'."
        )

    def missing_companions_message(self, task: str, image_id: str, missing: list[SequenceRef]) -> str:
        info = self.series().get(image_id)
        study = f"study {info.study_uid} of patient {info.patient_id}" if info else "the same study"
        needed = ", ".join(
            f"a {m.suffix} series (SeriesDescription matching {self._patterns_text(m.suffix)})" for m in missing
        )
        return (
            f"{task} needs {needed} beside series {image_id} in {study}; none is there. Store the missing series "
            "in the same study on the PACS, or set --conf sequence_patterns if it is there under another name."
        )

    def no_baseline_message(self, task: str, ref: SequenceRef) -> str:
        return (
            f"{task} needs a baseline: patient {ref.subject} has no {ref.suffix} series in a study before "
            f"{ref.session[:8]} (studies ordered by StudyDate/StudyTime). Store the earlier visit on the PACS, "
            'or name its series with params {"baseline": "<SeriesInstanceUID>"}.'
        )
