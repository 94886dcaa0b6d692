"""The msapp server on a real Orthanc (DICOMweb): infer on a SeriesInstanceUID, companions and baselines found by
SeriesDescription and study date, refusals that name the problem, and labels saved back as DICOM SEG."""

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests
from monailabel.client import MONAILabelClient

from mslesion.dev.orthanc import missing_programs
from mslesion.dev.serverproc import ServerProcess, free_port

pytestmark = pytest.mark.skipif(bool(missing_programs()), reason=f"Orthanc not installed: {missing_programs()}")

@pytest.fixture(scope="module")
def dicom_server(orthanc, phantoms):
    from mslesion.dev.fixtures import shared_server

    return shared_server()


@pytest.fixture(scope="module")
def client(dicom_server):
    return MONAILabelClient(dicom_server.url)


def canonical(path) -> nib.Nifti1Image:
    return nib.as_closest_canonical(nib.load(str(path)))


def error_of(call) -> str:
    with pytest.raises(Exception) as caught:
        call()
    return str(caught.value)


def wait_until_listed(client, series: str, tries: int = 60) -> None:
    """A series stored on the PACS is listed once the server reads its series list again (every few seconds)."""
    for _ in range(tries):
        if series in requests.get(f"{client._server_url}/datastore/?output=all", timeout=60).json()["objects"]:
            return
        time.sleep(0.5)
    raise AssertionError(f"series {series} never appeared in /datastore/")


def test_datastore_lists_the_series_of_the_pacs(client, phantoms):
    listed = requests.get(f"{client._server_url}/datastore/?output=all", timeout=60).json()["objects"]
    assert set(phantoms.series.values()) <= set(listed)
    flair = listed[phantoms.series["sub-01_ses-02_FLAIR"]]["image"]["info"]
    assert flair["sequence"] == "FLAIR" and flair["SeriesDescription"] == "AX FLAIR"


def test_flair_lesion_on_a_series_answers_on_the_series_grid(client, phantoms):
    series = phantoms.series["sub-01_ses-02_FLAIR"]
    label_file, params = client.infer("flair_lesion", series, {})
    label, truth = canonical(label_file), canonical(phantoms.truth / "sub-01_ses-02_FLAIR.nii.gz")
    # the label lands on the phantom's own voxels: same grid, world positions within 0.01 mm
    assert label.shape == truth.shape
    np.testing.assert_allclose(label.affine, truth.affine, atol=1e-2)
    predicted = np.asanyarray(label.dataobj) > 0
    assert params["lesions"]["count"] == int(predicted.any()) * params["lesions"]["count"]
    if predicted.any():  # what the (weak, phantom-trained) default finds lies on the phantom's lesions
        truth_mask = np.asanyarray(truth.dataobj) > 0
        assert (predicted & truth_mask).sum() / predicted.sum() > 0.5


def test_new_lesion_finds_the_previous_study_of_the_same_patient(client, phantoms):
    follow_up = phantoms.series["sub-01_ses-02_FLAIR"]
    _, params = client.infer("new_lesion", follow_up, {})
    assert params["registration"]["similarity_after"] > 0.5  # registered to the same patient's first visit
    message = error_of(lambda: client.infer("new_lesion", phantoms.series["sub-01_ses-01_FLAIR"], {}))
    assert "422" in message and "needs a baseline" in message and "MSPHANTOM01" in message


def test_a_series_no_pattern_matches_is_a_422_that_lists_the_patterns(client, orthanc, phantoms):
    from mslesion.dicom.export import dicomweb_client, series_datasets, upload

    image = nib.load(phantoms.studies / "sub-02_ses-01_FLAIR.nii.gz")
    datasets = series_datasets(image, "02", "01", "dwi", description="DWI TRACE")
    upload(dicomweb_client(orthanc.dicomweb, orthanc.auth), datasets)
    series = str(datasets[0].SeriesInstanceUID)
    wait_until_listed(client, series)
    message = error_of(lambda: client.infer("flair_lesion", series, {}))
    assert "422" in message and "DWI TRACE" in message and "/flair/" in message and "sequence_patterns" in message


def test_a_study_missing_a_companion_is_a_422_naming_it(client, phantoms):
    message = error_of(lambda: client.infer("enhancement_prediction", phantoms.series["sub-02_ses-01_FLAIR"], {}))
    assert "422" in message and "a T2w series" in message and "beside series" in message


def test_wrong_sequence_points_to_the_right_series(client, phantoms):
    message = error_of(lambda: client.infer("flair_lesion", phantoms.series["sub-02_ses-01_T1w"], {}))
    assert "422" in message and "needs a FLAIR" in message and phantoms.series["sub-02_ses-01_FLAIR"] in message


def truth_on_server_grid(phantoms, image_id, server_image) -> np.ndarray:
    """The phantom's ground truth in the voxel order of the server's copy of the series (LPS from DICOM)."""
    truth = nib.load(phantoms.truth / f"{image_id}.nii.gz")
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(truth.affine),
                                                nib.orientations.io_orientation(server_image.affine))
    moved = truth.as_reoriented(transform)
    np.testing.assert_allclose(moved.affine, server_image.affine, atol=1e-2)
    return np.asanyarray(moved.dataobj).astype(np.uint8)


def test_saved_label_becomes_a_dicom_seg_of_its_series_and_is_pulled_again(client, orthanc, phantoms, tmp_path):
    import pydicom_seg
    import SimpleITK as sitk

    from mslesion.dicom.datastore import open_datastore

    image_id = "sub-01_ses-01_FLAIR"
    series = phantoms.series[image_id]
    image_file, _ = client.infer("flair_lesion", series, {})  # a label on the grid the server (and OHIF) uses
    server_image = nib.load(image_file)
    corrected = truth_on_server_grid(phantoms, image_id, server_image)
    assert corrected.any()
    label_path = tmp_path / "corrected.nii.gz"
    nib.save(nib.Nifti1Image(corrected, server_image.affine), str(label_path))
    client.save_label(series, str(label_path), tag="final")

    # the SEG is in Orthanc, in the same study, referencing the source series
    segs = requests.get(f"{orthanc.dicomweb}/series", params={"Modality": "SEG", "includefield": "0020000D"},
                        auth=orthanc.auth, timeout=30).json()
    study = requests.get(f"{orthanc.dicomweb}/series", params={"SeriesInstanceUID": series}, auth=orthanc.auth,
                         timeout=30).json()[0]["0020000D"]["Value"][0]
    ours = []
    for entry in segs:
        seg_uid = entry["0020000E"]["Value"][0]
        meta = requests.get(f"{orthanc.dicomweb}/studies/{study}/series/{seg_uid}/metadata", auth=orthanc.auth,
                            timeout=30)
        if meta.ok:
            referenced = pydicom.Dataset.from_json(meta.json()[0]).ReferencedSeriesSequence[0].SeriesInstanceUID
            if referenced == series:
                ours.append(seg_uid)
    assert len(ours) == 1

    # read it back with an independent reader (pydicom-seg) and compare with the ground truth, in world space
    from mslesion.dicom.export import dicomweb_client

    seg = dicomweb_client(orthanc.dicomweb, orthanc.auth).retrieve_series(study, ours[0])[0]
    result = pydicom_seg.MultiClassReader().read(seg)
    seg_file = tmp_path / "seg.nii.gz"
    sitk.WriteImage(result.image, str(seg_file))
    from_pacs, truth = canonical(seg_file), canonical(phantoms.truth / f"{image_id}.nii.gz")
    np.testing.assert_allclose(from_pacs.affine, truth.affine, atol=1e-2)
    assert np.array_equal(np.asanyarray(from_pacs.dataobj) > 0, np.asanyarray(truth.dataobj) > 0)

    # a server with an empty cache (the next pull) finds it: training's datalist holds the label, on the right voxels
    fresh = open_datastore(orthanc.dicomweb, tmp_path / "fresh-cache", auth=orthanc.auth)
    assert series in fresh.get_labeled_images()
    (entry,) = [e for e in fresh.datalist() if Path(e["image"]).name.startswith("sub-MSPHANTOM01_")]
    pulled = nib.load(entry["label"])
    assert Path(entry["image"]).name == "sub-MSPHANTOM01_ses-20240115093000_FLAIR.nii.gz"
    assert np.array_equal(np.asanyarray(pulled.dataobj), corrected)
    np.testing.assert_allclose(pulled.affine, server_image.affine, atol=1e-3)

    # and training uses it: flair_lesion's trainer lists it among its labelled studies
    from mslesion.tasks import TASKS

    config = TASKS["flair_lesion"]()
    config.init("flair_lesion", str(tmp_path / "model"), {}, None)
    items = config.trainer().labelled_studies(fresh)
    assert entry["label"] in [item["label"] for item in items]


def test_an_unreachable_pacs_stops_the_server_at_start_up_with_a_clear_error(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(RuntimeError) as failed:
        ServerProcess(dead, tmp_path / "model", tmp_path / "server.log", conf={"models": "flair_lesion",
                                                                                "dicomweb_cache": tmp_path / "c"})
    assert f"cannot reach the DICOMweb server {dead}" in str(failed.value)


def test_a_pacs_that_stops_answering_is_a_503_naming_it(tmp_path):
    from mslesion.dev.orthanc import OrthancProcess
    from mslesion.dicom.datastore import open_datastore
    from mslesion.studies import StudyError, resolve_sequences

    with OrthancProcess(tmp_path / "orthanc") as orthanc:
        store = open_datastore(orthanc.dicomweb, tmp_path / "cache")
        assert store.list_images() == []
    store.catalogue.invalidate()
    for call in (store.list_images, lambda: resolve_sequences(store, "1.2.3", "flair_lesion", "FLAIR")):
        with pytest.raises(StudyError) as refused:
            call()
        assert refused.value.status == 503 and orthanc.dicomweb in refused.value.message


def test_a_raw_label_from_ohif_is_saved_as_a_seg_on_the_right_voxels(orthanc, phantoms, tmp_path):
    """OHIF's MONAI Label panel saves 'label.bin': uint8 voxels, columns fastest, in the series' own order."""
    from mslesion.dicom.datastore import open_datastore

    image_id = "sub-02_ses-01_FLAIR"
    series = phantoms.series[image_id]
    store = open_datastore(orthanc.dicomweb, tmp_path / "cache", auth=orthanc.auth)
    server_image = nib.load(store.get_image_uri(series))
    corrected = truth_on_server_grid(phantoms, image_id, server_image)
    raw = tmp_path / "label.bin"
    corrected.flatten(order="F").tofile(raw)
    store.save_label(series, str(raw), "final", {})
    (raw.parent / "short.bin").write_bytes(b"\0" * 100)
    with pytest.raises(Exception) as short:
        store.save_label(series, str(raw.parent / "short.bin"), "final", {})
    assert "422" in str(short.value) and "voxels" in str(short.value)

    fresh = open_datastore(orthanc.dicomweb, tmp_path / "fresh", auth=orthanc.auth)
    (entry,) = [e for e in fresh.datalist() if Path(e["image"]).name.startswith("sub-MSPHANTOM02_")]
    assert np.array_equal(np.asanyarray(nib.load(entry["label"]).dataobj), corrected)
