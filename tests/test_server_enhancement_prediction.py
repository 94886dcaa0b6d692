"""enhancement_prediction through the real server and MONAILabelClient: the answer on a phantom visit with and
without a saved FLAIR label, and the refusals a user meets (missing T2w, too few labelled studies)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient

from mslesion.dev.serverproc import ServerProcess
from mslesion.tasks import TASKS

pytestmark = [
    pytest.mark.server,
    pytest.mark.slow,
    pytest.mark.skipif("enhancement_prediction" not in TASKS, reason="enhancement_prediction is not registered"),
]

LABELLED, UNLABELLED = "sub-01_ses-01_FLAIR", "sub-02_ses-01_FLAIR"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Two MS phantom visits with T1w, T2w, FLAIR: subject 01's FLAIR label saved, subject 02 unlabelled."""
    from mslesion.phantoms import PhantomOptions, write_cohort

    folder = tmp_path_factory.mktemp("enhancement-prediction")
    write_cohort(folder / "studies", cohort="ms", subjects=2, sessions=1, seed=4242, labelled=0.5,
                 truth_dir=folder / "truth", options=PhantomOptions(sequences=("FLAIR", "T1w", "T2w")))
    return folder


@pytest.fixture(scope="module")
def server(root, tmp_path_factory):
    srv = ServerProcess.on_a_copy(root / "studies", tmp_path_factory.mktemp("enhancement-prediction-server"),
                                  env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return MONAILabelClient(server.url, tmpdir=str(tmp_path_factory.mktemp("client")))


def answered(server, client, image_id, params=None):
    label_path, answer = client.infer("enhancement_prediction", image_id, params or {})
    label, image = nib.load(label_path), nib.load(server.studies / f"{image_id}.nii.gz")
    assert label.shape == image.shape and np.allclose(label.affine, image.affine, atol=1e-4)
    return np.asarray(label.dataobj), answer


def test_info_lists_the_inputs(client):
    assert client.info()["models"]["enhancement_prediction"]["inputs"] == ["FLAIR", "T1w", "T2w"]


def test_a_labelled_visit_is_judged_from_its_saved_label(server, client, root):
    label, answer = answered(server, client, LABELLED)
    assert answer["lesion_mask_source"] == "saved label"
    assert 0 <= answer["probability"] <= 1 and answer["decision"] in ("enhancing", "not enhancing")
    assert answer["slices"] and all({"index", "score", "predicted"} <= set(row) for row in answer["slices"])
    lesions = np.asarray(nib.load(root / "truth" / f"{LABELLED}.nii.gz").dataobj) > 0
    assert set(np.unique(label)) <= {0, 1} and not (label.astype(bool) & ~lesions).any()  # only lesion voxels
    marked = {int(k) for k in np.flatnonzero(label.any(axis=(0, 1)))}
    predicted = {row["index"] for row in answer["slices"] if row["predicted"]}
    assert all(any(abs(k - i) <= 1 for i in predicted) for k in marked)  # within a predicted 3 mm slice


def test_the_lesion_reader_of_the_shipped_weights_answers_per_lesion_and_the_participant_net_stays_beside_it(
        server, client, root):
    """The shipped weights carry a lesion reader: it gives the headline (probability strictly inside (0, 1),
    decision at its own threshold), names each lesion of the saved label with its probability, most suspicious
    first, at the lesion's centre; the paper's participant net answers beside it."""
    _, answer = answered(server, client, LABELLED)
    assert answer["answered_by"] == "lesion_reader"
    assert 0 < answer["probability"] < 1
    assert answer["decision"] == ("enhancing" if answer["probability"] >= answer["threshold"] else "not enhancing")
    net = answer["participant_net"]
    assert 0 < net["probability"] < 1 and net["decision"] in ("enhancing", "not enhancing")
    read = answer["lesion_reader"]
    truth = nib.load(root / "truth" / f"{LABELLED}.nii.gz")
    from scipy import ndimage

    components, count = ndimage.label(np.asarray(truth.dataobj) > 0, structure=np.ones((3, 3, 3)))
    assert 0 < read["lesions_read"] <= count and read["lesions"]
    probabilities = [lesion["probability"] for lesion in read["lesions"]]
    assert probabilities == sorted(probabilities, reverse=True) and all(0 < p < 1 for p in probabilities)
    centres = [nib.affines.apply_affine(truth.affine, ndimage.center_of_mass(components == i))
               for i in range(1, count + 1)]
    for lesion in read["lesions"]:  # every named lesion is one of the saved label's, at its centre
        assert min(np.linalg.norm(np.subtract(lesion["centroid_mm"], c)) for c in centres) < 2.0


def test_an_unlabelled_visit_falls_back_to_flair_lesion(server, client):
    _, answer = answered(server, client, UNLABELLED)
    assert answer["lesion_mask_source"] == "flair_lesion prediction"
    assert answer["answered_by"] == "lesion_reader" and 0 < answer["probability"] < 1  # the reader of predicted masks


def test_a_session_without_t1w_and_t2w_is_refused_with_their_names(server, client):
    client.upload_image(str(server.studies / f"{LABELLED}.nii.gz"), image_id="sub-09_ses-01_FLAIR")
    with pytest.raises(Exception) as refused:
        client.infer("enhancement_prediction", "sub-09_ses-01_FLAIR", {})
    message = str(refused.value)
    assert "422" in message and "sub-09_ses-01_T1w" in message and "sub-09_ses-01_T2w" in message
    assert "PUT /datastore/image" in message


def test_training_without_enough_labelled_studies_is_a_422(server):
    answer = requests.post(f"{server.url}/train/enhancement_prediction", json={}, timeout=60)
    assert answer.status_code == 422 and "at least 4 labelled studies" in answer.text
