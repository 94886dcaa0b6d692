"""Companion resolution from BIDS-style names, and the errors a user sees when it fails."""

import pytest

from mslesion.studies import StudyError, parse_image_id, resolve_sequences


class Store:
    def __init__(self, ids):
        self.ids = ids

    def list_images(self):
        return list(self.ids)

    def get_image_uri(self, image_id):
        return f"/data/{image_id}.nii.gz"


def test_parse_names():
    ref = parse_image_id("sub-07_ses-02_ce-gadolinium_T1w.nii.gz")
    assert (ref.subject, ref.session, ref.suffix) == ("07", "02", "ce-gadolinium_T1w")
    assert parse_image_id("sub-07_ses-02_FLAIR").companion("T1w").image_id == "sub-07_ses-02_T1w"
    assert parse_image_id("brain.nii.gz") is None
    assert parse_image_id("sub-1_ses-1_bold") is None


def test_resolves_companions_of_the_same_session():
    store = Store(["sub-01_ses-01_FLAIR", "sub-01_ses-01_T1w", "sub-01_ses-02_T1w"])
    paths = resolve_sequences(store, "sub-01_ses-01_FLAIR", "task", "FLAIR", ["T1w"])
    assert paths == {"FLAIR": "/data/sub-01_ses-01_FLAIR.nii.gz", "T1w": "/data/sub-01_ses-01_T1w.nii.gz"}


def test_errors_name_the_problem_and_the_fix():
    store = Store(["sub-01_ses-01_FLAIR", "sub-01_ses-01_T1w", "scan"])
    with pytest.raises(StudyError) as unknown:
        resolve_sequences(store, "sub-09_ses-01_FLAIR", "flair_lesion", "FLAIR")
    assert unknown.value.status == 404
    with pytest.raises(StudyError) as wrong:
        resolve_sequences(store, "sub-01_ses-01_T1w", "flair_lesion", "FLAIR")
    assert wrong.value.status == 422 and "needs a FLAIR" in wrong.value.message
    assert "sub-01_ses-01_FLAIR" in wrong.value.message
    with pytest.raises(StudyError) as missing:
        resolve_sequences(store, "sub-01_ses-01_FLAIR", "enhancement", "FLAIR", ["T2w"])
    assert missing.value.status == 422 and "sub-01_ses-01_T2w" in missing.value.message
    with pytest.raises(StudyError) as unnamed:
        resolve_sequences(store, "scan", "flair_lesion", "FLAIR")
    assert "sub-<subject>_ses-<session>_FLAIR.nii.gz" in unnamed.value.message


def test_baseline_is_the_previous_session_of_the_same_subject():
    from mslesion.studies import resolve_baseline

    store = Store(["sub-01_ses-1_FLAIR", "sub-01_ses-2_FLAIR", "sub-01_ses-10_FLAIR", "sub-01_ses-3_T1w",
                   "sub-02_ses-5_FLAIR"])
    # numeric session order: ses-10 follows ses-2, not ses-1
    assert resolve_baseline(store, "sub-01_ses-10_FLAIR", "new_lesion") == "/data/sub-01_ses-2_FLAIR.nii.gz"
    assert resolve_baseline(store, "sub-01_ses-2_FLAIR", "new_lesion") == "/data/sub-01_ses-1_FLAIR.nii.gz"
    explicit = resolve_baseline(store, "sub-01_ses-10_FLAIR", "new_lesion", baseline_id="sub-01_ses-1_FLAIR")
    assert explicit == "/data/sub-01_ses-1_FLAIR.nii.gz"


def test_baseline_errors_name_the_problem_and_the_fix():
    from mslesion.studies import resolve_baseline

    store = Store(["sub-01_ses-01_FLAIR", "sub-01_ses-02_FLAIR", "sub-01_ses-01_T1w", "sub-02_ses-01_FLAIR"])
    with pytest.raises(StudyError) as first_visit:
        resolve_baseline(store, "sub-01_ses-01_FLAIR", "new_lesion")
    assert first_visit.value.status == 422 and "no FLAIR from a session before ses-01" in first_visit.value.message
    assert '"baseline"' in first_visit.value.message
    with pytest.raises(StudyError) as other_subject:
        resolve_baseline(store, "sub-01_ses-02_FLAIR", "new_lesion", baseline_id="sub-02_ses-01_FLAIR")
    assert other_subject.value.status == 422 and "force_baseline" in other_subject.value.message
    forced = resolve_baseline(store, "sub-01_ses-02_FLAIR", "new_lesion", baseline_id="sub-02_ses-01_FLAIR", force=True)
    assert forced == "/data/sub-02_ses-01_FLAIR.nii.gz"
    with pytest.raises(StudyError) as unknown:
        resolve_baseline(store, "sub-01_ses-02_FLAIR", "new_lesion", baseline_id="sub-01_ses-00_FLAIR")
    assert unknown.value.status == 404
    with pytest.raises(StudyError) as wrong_sequence:
        resolve_baseline(store, "sub-01_ses-02_FLAIR", "new_lesion", baseline_id="sub-01_ses-01_T1w")
    assert wrong_sequence.value.status == 422 and "not a FLAIR" in wrong_sequence.value.message
    with pytest.raises(StudyError) as itself:
        resolve_baseline(store, "sub-01_ses-02_FLAIR", "new_lesion", baseline_id="sub-01_ses-02_FLAIR")
    assert itself.value.status == 422

