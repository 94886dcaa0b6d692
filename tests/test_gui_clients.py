"""What 3D Slicer's MONAI Label module and OHIF's panel show and save, replayed against the real server.

tests/clients.py applies the two GUIs' own rules (segment numbering, options coercion, sessions, progress bars) as
read from MONAI Label 0.8.5's sources; each test is one row of issue 13's table and failed on e3e691b.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pytest
import requests

from clients import OhifPanel, SlicerModule
from mslesion import studies, vocabulary
from mslesion.dev.serverproc import ServerProcess

pytestmark = [pytest.mark.server, pytest.mark.slow]

FOLLOW_UP, BASELINE = "sub-06_ses-02_FLAIR", "sub-06_ses-01_FLAIR"
OTHER_FOLLOW_UP = "sub-07_ses-02_FLAIR"
POST = "sub-06_ses-02_ce-gadolinium_T1w"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from mslesion.phantoms import PhantomOptions, write_cohort

    root = tmp_path_factory.mktemp("gui")
    write_cohort(root / "studies", cohort="ms", subjects=2, sessions=2, seed=0, first_subject=6, labelled=0,
                 truth_dir=root / "truth", options=PhantomOptions(sequences=studies.SEQUENCES))
    return root


@pytest.fixture(scope="module")
def server(root, tmp_path_factory):
    srv = ServerProcess.on_a_copy(root / "studies", tmp_path_factory.mktemp("gui-server"),
                                  env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    yield srv
    srv.stop()


@pytest.fixture
def slicer(server, tmp_path):
    return SlicerModule(server.url, str(tmp_path))


@pytest.fixture
def ohif(server):
    panel = OhifPanel(server.url)
    panel.connect()
    return panel


def truth(root, image_id):
    return np.asarray(nib.load(root / "truth" / f"{image_id}.nii.gz").dataobj)


def stored_label(server, image_id):
    return np.asarray(nib.load(server.studies / "labels" / "final" / f"{image_id}.nii.gz").dataobj)


def open_in_slicer(slicer, image_id):
    slicer.fetch_info()
    volume = nib.load(slicer_path(slicer, image_id))
    slicer._open(volume, {"id": image_id})


def slicer_path(slicer, image_id):
    answer = requests.get(f"{slicer.url}/datastore/image", params={"image": image_id}, timeout=60)
    answer.raise_for_status()
    path = f"{slicer.tmpdir}/{image_id}.nii.gz"
    with open(path, "wb") as handle:
        handle.write(answer.content)
    return path


def stop_training(server):
    """DELETE /train/ (the GUIs' Stop), then wait until the queue says it stopped."""
    requests.delete(f"{server.url}/train/", timeout=60)
    deadline = time.time() + 120
    while time.time() < deadline:
        if requests.get(f"{server.url}/train/", timeout=30).json().get("status") != "RUNNING":
            return
        time.sleep(1)


def blob(shape, centre, radius=3):
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


# -- 1. one label vocabulary ------------------------------------------------------------------------------------------


def test_the_vocabulary_uses_the_sequence_names_of_the_studies():
    assert vocabulary.FLAIR == studies.FLAIR and vocabulary.T1_POST == studies.T1_POST


# -- 6. Next Sample for several annotators (first: later tests label most FLAIRs) ---------------------------


def test_concurrent_annotators_get_different_studies(server, tmp_path):
    modules = [SlicerModule(server.url, str(tmp_path / str(i))) for i in range(2)]
    for i, module in enumerate(modules):
        (tmp_path / str(i)).mkdir()
        module.client_id = f"annotator-{i}"
    with ThreadPoolExecutor(2) as pool:
        samples = list(pool.map(lambda m: m.client().next_sample("first", {}), modules))
    assert samples[0]["id"] != samples[1]["id"], samples


def test_slicer_numbers_a_flairs_segments_as_the_stored_values(slicer):
    info = slicer.fetch_info()
    numbering = {name: i + 1 for i, name in enumerate(info["labels"])}  # Slicer: segment i is saved as i + 1
    for name, value in vocabulary.VOCABULARY[studies.FLAIR].items():
        assert numbering[name] == value, info["labels"]
    assert info["models"]["new_lesion"]["labels"] == {"MS lesion": 1, "new MS lesion": 2}
    for model, meta in info["models"].items():
        for name in meta["labels"]:
            assert vocabulary.canonical_name(name) is not None, (model, name)


def test_new_lesion_shows_old_and_new_lesions_as_their_own_segments(slicer, ohif, root):
    open_in_slicer(slicer, FOLLOW_UP)
    answer = slicer.run("new_lesion")
    assert answer is not None, slicer.last_error
    assert slicer.voxels("new MS lesion") > 0, "the new lesions landed in no segment"
    assert slicer.voxels("MS lesion") > 0, "the other lesions are not shown by default"
    new_truth = truth(root, FOLLOW_UP) == 2
    assert (slicer.segment("new MS lesion").mask & new_truth).any()

    assert ohif.run("new_lesion", FOLLOW_UP), ohif.notification
    assert ohif.voxels("new MS lesion") == slicer.voxels("new MS lesion")
    assert ohif.voxels("MS lesion") == slicer.voxels("MS lesion")


def test_slicer_submit_label_stores_what_each_segment_means(slicer, server):
    open_in_slicer(slicer, BASELINE)
    shape = slicer.volume.shape
    old, new = blob(shape, (90, 110, 80)), blob(shape, (110, 110, 80))
    slicer.paint("MS lesion", old)
    slicer.paint("new MS lesion", new)
    slicer.submit_label()
    stored = stored_label(server, BASELINE)
    assert set(np.unique(stored[old])) == {1} and set(np.unique(stored[new])) == {2}

    open_in_slicer(slicer, POST)  # a post-contrast T1: "enhancing lesion" is the third app-level segment
    enhancing = blob(slicer.volume.shape, (100, 100, 90))
    slicer.paint("enhancing lesion", enhancing)
    slicer.submit_label()
    stored = stored_label(server, POST)
    assert set(np.unique(stored[enhancing])) == {1} and set(np.unique(stored)) == {0, 1}


def test_a_segment_that_is_not_a_label_name_is_refused_by_name(slicer, server):
    open_in_slicer(slicer, "sub-07_ses-01_FLAIR")
    slicer.paint("Segment_1", blob(slicer.volume.shape, (90, 110, 80)))
    with pytest.raises(Exception) as refused:
        slicer.submit_label()
    message = str(refused.value)
    assert "422" in message and "Segment_1" in message and "new MS lesion" in message
    assert not (server.studies / "labels" / "final" / "sub-07_ses-01_FLAIR.nii.gz").exists()

    open_in_slicer(slicer, POST)
    slicer.paint("new MS lesion", blob(slicer.volume.shape, (90, 110, 80)))
    with pytest.raises(Exception) as refused:
        slicer.submit_label()
    assert "422" in str(refused.value) and "enhancing lesion" in str(refused.value)


# -- 3. enhancement_prediction in the GUIs ----------------------------------------------------------------------------


def test_enhancement_predictions_decision_is_the_segment_name(slicer, ohif):
    open_in_slicer(slicer, BASELINE)
    answer = slicer.run("enhancement_prediction")
    assert answer is not None, slicer.last_error
    decision = "predicted enhancing" if answer["decision"] == "enhancing" else "predicted not enhancing"
    expected = f"MS lesion ({decision}, p = {answer['probability']:.2f})"
    assert expected in slicer.segment_names()
    description = ohif.info["models"]["enhancement_prediction"]["description"]
    assert "/datastore/image/info" in description and "console" in description
    image_info = requests.get(f"{slicer.url}/datastore/image/info", params={"image": BASELINE}, timeout=30).json()
    assert image_info["enhancement_prediction"]["probability"] == answer["probability"]


# -- 4. new_lesion's options ------------------------------------------------------------------------------------------


def test_new_lesions_options_are_in_the_options_table_and_work_as_shown(slicer):
    open_in_slicer(slicer, FOLLOW_UP)
    shown = slicer.shown("infer", "new_lesion")
    assert {"baseline", "force_baseline", "include_all_lesions"} <= set(shown)
    slicer.edit("infer", "new_lesion", "baseline", "sub-07_ses-01_FLAIR")
    assert slicer.run("new_lesion") is None and "force_baseline" in slicer.last_error
    slicer.edit("infer", "new_lesion", "include_all_lesions", False)
    slicer.edit("infer", "new_lesion", "baseline", BASELINE)
    assert slicer.run("new_lesion") is not None, slicer.last_error
    assert slicer.voxels("MS lesion") == 0 and "new MS lesion" in slicer.segment_names()


# -- 5. sessions (volumes loaded in Slicer from a local file) ------------------------------------------------------


def test_a_local_copy_of_a_datastore_follow_up_finds_its_baseline(slicer, root):
    slicer.load_local_volume(root / "studies" / f"{FOLLOW_UP}.nii.gz")
    assert slicer.run("new_lesion") is not None, slicer.last_error
    assert slicer.voxels("new MS lesion") > 0


def test_a_local_post_contrast_t1_finds_its_pre_contrast_t1(slicer, root):
    slicer.load_local_volume(root / "studies" / f"{POST}.nii.gz")
    assert slicer.run("enhancement") is not None, slicer.last_error


def test_local_volumes_the_server_cannot_place_get_a_422_that_says_what_to_load(slicer, root):
    slicer.load_local_volume(root / "studies" / "sub-06_ses-02_T1w.nii.gz")
    assert slicer.run("flair_lesion") is None
    assert "422" in slicer.last_error and "FLAIR" in slicer.last_error

    slicer.load_local_volume(root / "studies" / f"{FOLLOW_UP}.nii.gz", node_name="AX FLAIR")
    assert slicer.run("new_lesion") is None
    message = slicer.last_error
    assert "422" in message and "rename" in message.lower() and "sub-<subject>_ses-<session>_FLAIR" in message
    assert slicer.run("enhancement_prediction") is None
    assert "422" in slicer.last_error and "PUT /datastore" not in slicer.last_error
    assert slicer.run("flair_lesion") is not None, slicer.last_error  # one sequence: runs on the volume itself


def test_submit_label_on_a_local_copy_of_a_datastore_image(slicer, root, server):
    image_id = "sub-07_ses-02_FLAIR"
    slicer.load_local_volume(root / "studies" / f"{image_id}.nii.gz")
    lesion = blob(slicer.volume.shape, (100, 100, 80))
    slicer.paint("MS lesion", lesion)
    slicer.submit_label()
    assert set(np.unique(stored_label(server, image_id)[lesion])) == {1}


# -- 1 (training). follow-up labels teach new_lesion only when new lesions were marked ------------------------------


def test_follow_up_labels_without_new_lesions_are_skipped_by_new_lesion_training(slicer, server):
    for image_id in (FOLLOW_UP, OTHER_FOLLOW_UP):
        open_in_slicer(slicer, image_id)
        slicer.paint("MS lesion", blob(slicer.volume.shape, (95, 110, 80)))
        slicer.submit_label()
    answer = requests.post(f"{server.url}/train/new_lesion", json={}, timeout=60)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert FOLLOW_UP in detail and OTHER_FOLLOW_UP in detail and "new_lesions_marked" in detail

    open_in_slicer(slicer, FOLLOW_UP)  # this one is marked by drawing a new lesion, the other by saying so
    slicer.paint("new MS lesion", blob(slicer.volume.shape, (110, 110, 80)))
    slicer.submit_label()
    open_in_slicer(slicer, OTHER_FOLLOW_UP)
    slicer.paint("MS lesion", blob(slicer.volume.shape, (95, 110, 80)))
    slicer.submit_label({"new_lesions_marked": True})
    started = requests.post(f"{server.url}/train/new_lesion", json={"max_epochs": 1}, timeout=60)
    assert started.status_code == 200, started.text
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # 2. the running trainer's stats are the ones the GUIs read first
            first = next(iter(slicer.fetch_info()["train_stats"].values()))
            if first.get("task") == "new_lesion":
                break
            time.sleep(1)
        assert first.get("task") == "new_lesion" and first.get("status") == "RUNNING", first
        assert first["total_epochs"] == 1 and "total_time" not in first
    finally:
        stop_training(server)


# -- 2. train options and progress bars -----------------------------------------------------------------------------


def test_ohif_update_model_that_cannot_train_a_model_says_so(ohif, server, tmp_path):
    from monailabel.client import MONAILabelClient

    client = MONAILabelClient(server.url, str(tmp_path))
    for image_id in ("sub-06_ses-01_FLAIR", "sub-07_ses-01_FLAIR"):  # flair_lesion can train; enhancement cannot
        image = nib.load(server.studies / f"{image_id}.nii.gz")
        path = tmp_path / f"{image_id}.nii.gz"
        nib.save(nib.Nifti1Image(blob(image.shape, (95, 110, 80)).astype(np.uint8), image.affine), path)
        client.save_label(image_id, str(path), tag="final")
    ohif.edit("train", "enhancement", "max_epochs", "")
    assert not ohif.update_model(), ohif.last_answer.text
    assert ohif.last_answer.status_code == 422 and "enhancement" in ohif.last_answer.json()["detail"]
    assert requests.get(f"{server.url}/train/", timeout=30).json().get("status") != "RUNNING"


def test_training_options_from_the_options_table_and_both_progress_bars(slicer, ohif, server):
    open_in_slicer(slicer, "sub-06_ses-01_FLAIR")
    shown = slicer.shown("train", "flair_lesion")
    assert shown["max_epochs"] == "" and shown["patches_per_study"] == ""  # 0: the schedule's default
    slicer.edit("train", "flair_lesion", "max_epochs", "2")
    sent = slicer.params_from_config("train", "flair_lesion")
    assert sent["max_epochs"] == 2 and sent["patches_per_study"] == 0
    slicer.edit("train", "flair_lesion", "patches_per_study", "2")
    status = slicer.train("flair_lesion")
    assert status.get("status") in ("SUBMITTED", "RUNNING"), status
    seen_slicer, seen_ohif = set(), set()
    deadline = time.time() + 600
    while time.time() < deadline:
        running = requests.get(f"{server.url}/train/", timeout=30).json().get("status") == "RUNNING"
        bar, panel = slicer.progress(), ohif.progress()
        if running and bar["task"] == "flair_lesion":
            seen_slicer.add((bar["current"], bar["total"]))
            seen_ohif.add((panel["current"], panel["total"]))
        if not running and seen_slicer:
            break
        time.sleep(1)
    assert server.wait_for_training()["status"] == "DONE"
    assert {total for _, total in seen_slicer} == {2} and {total for _, total in seen_ohif} == {2}
    assert max(c for c, _ in seen_slicer) >= 1
    stats = slicer.fetch_info()["train_stats"]
    first = next(iter(stats.values()))
    assert first["task"] == "flair_lesion" and first["total_time"] > 0 and 0 <= first["best_metric"] <= 1
    assert first["epoch"] == 2 and first["total_epochs"] == 2


def test_ohif_training_options_typed_as_text(ohif, server):
    ohif.edit("train", "flair_lesion", "max_epochs", "")  # parseInt("") is NaN, sent as null
    ohif.edit("train", "flair_lesion", "patches_per_study", "2")
    ohif.edit("train", "flair_lesion", "lr", "0.00002")
    assert ohif.edits["train"]["flair_lesion"] == {"max_epochs": None, "patches_per_study": 2, "lr": 2e-05}
    try:
        assert ohif.update_model(), ohif.last_answer.text
        assert set(ohif.last_answer.json()) == {"flair_lesion"}
    finally:
        stop_training(server)
