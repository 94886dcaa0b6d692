"""The review strategy: among labelled FLAIRs, the one whose saved label the served model disagrees with most."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mslesion.phantoms import PhantomOptions, write_cohort
from mslesion.server.datastore import ValidatingDatastore
from mslesion.server.leases import LEASES
from mslesion.server.strategies import ReviewStrategy
from mslesion.tasks.flair_lesion import FlairLesion

pytestmark = pytest.mark.slow


def test_review_offers_the_label_the_model_disagrees_with_and_remembers_scores(tmp_path, monkeypatch):
    studies = tmp_path / "studies"
    write_cohort(studies, cohort="ms", subjects=2, seed=31, labelled=1.0, options=PhantomOptions(sequences=("FLAIR",)))
    # sub-02's saved "correction" lost every lesion: a mistake a second look should catch
    wrong = studies / "labels" / "final" / "sub-02_ses-01_FLAIR.nii.gz"
    truth = nib.load(wrong)
    nib.save(nib.Nifti1Image(np.zeros(truth.shape, np.uint8), truth.affine), wrong)
    store = ValidatingDatastore(str(studies), extensions=["*.nii.gz"], auto_reload=False)
    config = FlairLesion()
    config.init("flair_lesion", str(tmp_path / "model"), {}, None)
    strategy = ReviewStrategy(config.infer())
    monkeypatch.setattr(LEASES, "seconds", 0.0)  # no lease between the two calls

    sample = strategy({"device": "cpu"}, store)
    assert sample["id"] == "sub-02_ses-01_FLAIR" and sample["strategy"] == "review"
    assert sample["dice"] == pytest.approx(0.0)
    good = store.get_image_info("sub-01_ses-01_FLAIR")["flair_lesion_agreement"]["dice"]
    assert good > 0.5  # the intact label agrees with the model

    # a second call reuses the stored scores (same weights, same labels)
    version = store.get_image_info("sub-02_ses-01_FLAIR")["flair_lesion_agreement"]["version"]
    assert strategy({"device": "cpu"}, store)["id"] == "sub-02_ses-01_FLAIR"
    assert store.get_image_info("sub-02_ses-01_FLAIR")["flair_lesion_agreement"]["version"] == version
