"""Bad requests get a clear 4xx that names the problem and the fix, and change nothing already saved."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import requests

from conftest import tree_digest

pytestmark = pytest.mark.server


@pytest.fixture
def unchanged(server):
    """Asserts after the test that every datastore file and every published weight is byte-identical."""
    before = tree_digest(server.studies), tree_digest(server.model_dir) if server.model_dir.exists() else {}
    yield
    after = tree_digest(server.studies), tree_digest(server.model_dir) if server.model_dir.exists() else {}
    assert after == before


def post(server, path, **kwargs):
    return requests.post(f"{server.url}{path}", timeout=120, **kwargs)


def test_unknown_image_is_404(server, unchanged):
    answer = post(server, "/infer/flair_lesion", params={"image": "sub-99_ses-01_FLAIR"})
    assert answer.status_code == 404
    assert "sub-99_ses-01_FLAIR" in answer.json()["detail"] and "not in the datastore" in answer.json()["detail"]


def test_unknown_model_is_404_not_500(server, unchanged):
    answer = post(server, "/infer/spleen", params={"image": "sub-01_ses-01_FLAIR"})
    assert answer.status_code == 404 and "flair_lesion" in answer.json()["detail"]


def test_flair_model_on_a_t1_says_it_needs_a_flair(server, unchanged):
    answer = post(server, "/infer/flair_lesion", params={"image": "sub-01_ses-01_T1w"})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert "needs a FLAIR" in detail and "sub-01_ses-01_FLAIR" in detail


def test_malformed_params_are_422(server, unchanged):
    answer = post(server, "/infer/flair_lesion", params={"image": "sub-01_ses-01_FLAIR"}, data={"params": "{oops"})
    assert answer.status_code == 422 and "not valid JSON" in answer.json()["detail"]


def test_label_of_the_wrong_shape_is_refused_and_not_written(server, unchanged, tmp_path):
    image = nib.load(server.studies / "sub-02_ses-01_FLAIR.nii.gz")
    wrong = tmp_path / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), image.affine), wrong)
    with wrong.open("rb") as f:
        answer = requests.put(
            f"{server.url}/datastore/label", params={"image": "sub-02_ses-01_FLAIR", "tag": "final"},
            files={"label": ("wrong.nii.gz", f)}, timeout=60,
        )
    assert answer.status_code == 422
    assert "shape (10, 10, 10)" in answer.json()["detail"] and str(image.shape) in answer.json()["detail"]
    assert not (server.studies / "labels" / "final" / "sub-02_ses-01_FLAIR.nii.gz").exists()


def test_label_with_values_outside_the_convention_is_refused(server, unchanged, tmp_path):
    image = nib.load(server.studies / "sub-03_ses-01_FLAIR.nii.gz")
    odd = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(np.full(image.shape, 7, np.uint8), image.affine), odd)
    with odd.open("rb") as f:
        answer = requests.put(f"{server.url}/datastore/label", params={"image": "sub-03_ses-01_FLAIR"},
                              files={"label": ("odd.nii.gz", f)}, timeout=60)
    assert answer.status_code == 422 and "[0, 1, 2]" in answer.json()["detail"]


def test_corrupt_nifti_upload_is_refused(server, unchanged, tmp_path):
    good = (server.studies / "sub-01_ses-01_FLAIR.nii.gz").read_bytes()
    corrupt = tmp_path / "sub-04_ses-01_FLAIR.nii.gz"
    corrupt.write_bytes(good[: len(good) // 3])  # truncated gzip stream
    with corrupt.open("rb") as f:
        answer = requests.put(f"{server.url}/datastore/image", params={"image": "sub-04_ses-01_FLAIR"},
                              files={"file": ("sub-04_ses-01_FLAIR.nii.gz", f)}, timeout=60)
    assert answer.status_code == 422 and "not a readable NIfTI" in answer.json()["detail"]
    assert not (server.studies / "sub-04_ses-01_FLAIR.nii.gz").exists()


def test_training_without_enough_labels_says_how_many_are_needed(server, unchanged):
    # The phantom datastore starts with one labelled FLAIR; training needs two (train + validate).
    answer = post(server, "/train/flair_lesion", json={"max_epochs": 1})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert "at least 2 labelled FLAIR" in detail and "has 1" in detail
    assert requests.get(f"{server.url}/train/", timeout=10).status_code == 404  # nothing was queued


def test_unknown_strategy_is_404(server, unchanged):
    answer = post(server, "/activelearning/smartest")
    assert answer.status_code == 404 and "uncertainty" in answer.json()["detail"]
