"""The whole active-learning loop against a real msapp server, through MONAILabelClient (Slicer's REST calls):
info -> next sample -> infer -> save label -> train -> published weights change -> infer again."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from mslesion import weights
from mslesion.metrics import lesion_scores

pytestmark = [pytest.mark.server, pytest.mark.slow]

# Measured on this datastore's sub-02 with the shipped default weights: Dice 0.21, 1 of 6 lesions detected.
# Random weights give Dice 0.0006. The defaults are weak (CPU-pretrained on non-MS phantoms; model/flair_lesion.md).
DICE_FLOOR = 0.1


def truth(phantom_root, image_id):
    return np.asarray(nib.load(phantom_root / "truth" / f"{image_id}.nii.gz").dataobj)


def test_info_lists_the_model_its_trainer_and_the_strategies(client):
    info = client.info()
    assert "flair_lesion" in info["models"] and "flair_lesion" in info["trainers"]
    assert {"random", "first", "uncertainty", "review"} <= set(info["strategies"])
    assert info["models"]["flair_lesion"]["inputs"] == ["FLAIR"]


def test_loop(client, server, phantom_root, tmp_path):
    # 1. the next sample is an unlabelled FLAIR (subject 01 is labelled already)
    sample = client.next_sample("first", {})
    assert sample["id"] == "sub-02_ses-01_FLAIR"

    # 2. flair_lesion answers a label on the image's own grid that finds the phantom's lesions
    label_path, params = client.infer("flair_lesion", sample["id"], {})
    label, image = nib.load(label_path), nib.load(server.studies / f"{sample['id']}.nii.gz")
    assert label.shape == image.shape and np.allclose(label.affine, image.affine, atol=1e-4)
    predicted = np.asarray(label.dataobj)
    assert set(np.unique(predicted)) <= {0, 1}
    scores = lesion_scores(truth(phantom_root, sample["id"]) > 0, predicted > 0)
    assert scores.dice >= DICE_FLOOR and scores.detected >= 1, scores
    report = params["lesions"]
    assert report["count"] > 0 and report["total_volume_ml"] > 0
    assert params["weights"] == "flair_lesion.pt"

    # 3. a radiologist's correction is saved (here: the ground truth)
    corrected = tmp_path / "corrected.nii.gz"
    nib.save(nib.Nifti1Image(truth(phantom_root, sample["id"]).astype(np.uint8), image.affine), corrected)
    client.save_label(sample["id"], str(corrected), tag="final")
    labelled = {k for k, v in client.datastore()["objects"].items() if "final" in v["labels"]}
    assert labelled == {"sub-01_ses-01_FLAIR", "sub-02_ses-01_FLAIR"}

    # 4. a short fine-tuning round publishes new weights
    published = server.model_dir / "flair_lesion" / "model.pt"
    assert not published.exists()
    client.train_start("flair_lesion", {"max_epochs": 1, "patches_per_study": 2})
    second = requests.post(f"{server.url}/train/flair_lesion", json={}, timeout=30)
    assert second.status_code == 409 and "already running" in second.json()["detail"]
    status = server.wait_for_training()
    assert status["status"] == "DONE", status.get("details", [])[-20:]
    stats = client.info()["train_stats"]["flair_lesion"]
    assert stats["status"] == "PUBLISHED" and stats["pretrained_from"] == "flair_lesion.pt"
    assert stats["train_studies"] == ["sub-01_ses-01_FLAIR"] and stats["val_studies"] == ["sub-02_ses-01_FLAIR"]
    # the post-processing is re-tuned on the round's validation study (not trained on) and served with the weights
    assert stats["postprocessing_scores"]["true_lesions"] > 0
    assert weights.load_metadata(published)["postprocessing"] == stats["postprocessing"]
    new, old = weights.load_state(published), weights.load_state(weights.default_weights("flair_lesion"))
    assert any(not torch.allclose(new[k], old[k]) for k in old), "training did not change the weights"

    # 5. the next infer uses the published weights without a restart
    _, params = client.infer("flair_lesion", "sub-03_ses-01_FLAIR", {})
    assert params["weights"] == "model.pt"


def test_uncertainty_strategy_returns_an_unlabelled_flair(client):
    sample = client.next_sample("uncertainty", {"max_candidates": 2})
    assert sample["id"].endswith("_FLAIR") and sample["id"] != "sub-01_ses-01_FLAIR"
    info = requests.get(f"{client.get_server_url()}/datastore/image/info", params={"image": sample["id"]}).json()
    assert info["flair_lesion_uncertainty"]["score"] == pytest.approx(sample["score"])
