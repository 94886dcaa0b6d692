"""new_lesion and enhancement through the real server and MONAILabelClient, on a two-visit phantom subject
whose follow-up has new and enhancing lesions, and the refusals a user meets when an input is missing."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient

from mslesion.dev.serverproc import ServerProcess
from mslesion.metrics import lesion_scores

pytestmark = [pytest.mark.server, pytest.mark.slow]

FOLLOW_UP, BASELINE = "sub-06_ses-02_FLAIR", "sub-06_ses-01_FLAIR"
POST = "sub-06_ses-02_ce-gadolinium_T1w"

# Measured with the shipped new_lesion defaults on this follow-up (2026-11-26): all 3 new lesions detected, Dice
# 0.049, but 346 false-positive components (model/new_lesion.md: they over-call). A sprawling random prediction
# could "detect" by the 10 % overlap rule, so the Dice floor is what random weights fail (~0.001).
NEW_LESION_DETECTED_FLOOR = 2
NEW_LESION_DICE_FLOOR = 0.02


@pytest.fixture(scope="module")
def longitudinal_root(tmp_path_factory):
    from mslesion.phantoms import PhantomOptions, write_cohort

    root = tmp_path_factory.mktemp("longitudinal")
    write_cohort(
        root / "studies", cohort="ms", subjects=2, sessions=2, seed=0, first_subject=6, labelled=0,
        truth_dir=root / "truth", options=PhantomOptions(sequences=("FLAIR", "T1w", "ce-gadolinium_T1w")),
    )
    return root


@pytest.fixture(scope="module")
def server(longitudinal_root, tmp_path_factory):
    srv = ServerProcess.on_a_copy(longitudinal_root / "studies", tmp_path_factory.mktemp("longitudinal-server"),
                                  env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return MONAILabelClient(server.url, tmpdir=str(tmp_path_factory.mktemp("client")))


def truth(root, image_id):
    return np.asarray(nib.load(root / "truth" / f"{image_id}.nii.gz").dataobj)


def answered(server, client, model, image_id, params=None):
    label_path, answer = client.infer(model, image_id, params or {})
    label, image = nib.load(label_path), nib.load(server.studies / f"{image_id}.nii.gz")
    assert label.shape == image.shape and np.allclose(label.affine, image.affine, atol=1e-4)
    return np.asarray(label.dataobj), answer


def test_info_lists_the_new_tasks_with_their_inputs(client):
    models = client.info()["models"]
    assert models["new_lesion"]["inputs"] == ["FLAIR"]
    assert models["enhancement"]["inputs"] == ["ce-gadolinium_T1w", "T1w"]


def test_new_lesion_finds_the_new_lesions_on_the_follow_up_grid(server, client, longitudinal_root):
    predicted, answer = answered(server, client, "new_lesion", FOLLOW_UP, {"include_all_lesions": False})
    assert set(np.unique(predicted)) <= {0, 2}
    new = truth(longitudinal_root, FOLLOW_UP) == 2
    scores = lesion_scores(new, predicted == 2)
    assert scores.detected >= NEW_LESION_DETECTED_FLOOR and scores.dice >= NEW_LESION_DICE_FLOOR, scores
    registration = answer["registration"]
    assert registration["improved"] and registration["similarity_after"] > registration["similarity_before"]
    assert "warning" not in registration
    assert answer["lesions"]["new_count"] == answer["lesions"]["count"]


def test_include_all_lesions_marks_the_old_ones_as_1_by_default(server, client):
    predicted, answer = answered(server, client, "new_lesion", FOLLOW_UP)
    assert {0, 1} <= set(np.unique(predicted)) <= {0, 1, 2}
    assert answer["label_names"] == {"MS lesion": 1, "new MS lesion": 2}


def test_explicit_baseline_of_another_subject_needs_force(server, client):
    with pytest.raises(Exception) as refused:
        client.infer("new_lesion", FOLLOW_UP, {"baseline": "sub-07_ses-01_FLAIR"})
    assert "422" in str(refused.value) and "force_baseline" in str(refused.value)
    _, answer = answered(server, client, "new_lesion", FOLLOW_UP,
                         {"baseline": "sub-07_ses-01_FLAIR", "force_baseline": True})
    assert "registration" in answer


def test_first_visit_has_no_baseline(client):
    with pytest.raises(Exception) as refused:
        client.infer("new_lesion", BASELINE, {})
    message = str(refused.value)
    assert "422" in message and "needs a baseline" in message and "ses-01" in message


def test_enhancement_answers_on_the_post_contrast_grid(server, client):
    # No detection floor: the shipped enhancement defaults find metastases on held-out metastasis phantoms
    # (validation F1 0.64) but none of this MS subject's 2 enhancing lesions (model/enhancement.md). What is
    # checked is the contract: the post-contrast T1's grid, label values, and a report that matches the label.
    predicted, answer = answered(server, client, "enhancement", POST)
    assert set(np.unique(predicted)) <= {0, 1}
    assert answer["task"] == "enhancement" and answer["weights"] == "enhancement.pt"
    assert answer["lesions"]["total_volume_ml"] <= predicted.sum() * 0.001 + 1e-6  # 1 mm voxels: 1 uL each


def test_enhancement_refuses_a_flair_and_a_missing_pre_contrast_t1(server, client):
    with pytest.raises(Exception) as wrong:
        client.infer("enhancement", FOLLOW_UP, {})
    assert "422" in str(wrong.value) and "needs a ce-gadolinium_T1w" in str(wrong.value)
    # a post-contrast T1 uploaded for a session that has no pre-contrast T1w
    client.upload_image(str(server.studies / f"{POST}.nii.gz"), image_id="sub-09_ses-01_ce-gadolinium_T1w")
    with pytest.raises(Exception) as missing:
        client.infer("enhancement", "sub-09_ses-01_ce-gadolinium_T1w", {})
    assert "422" in str(missing.value) and "sub-09_ses-01_T1w" in str(missing.value)
