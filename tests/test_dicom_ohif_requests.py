"""The requests OHIF's MONAI Label panel makes (as its bundled JS sends them), against the real server on a real
Orthanc: Next Sample offers a FLAIR series, infer answers the NRRD it asks for on the series' voxels, Save sends
raw 'label.bin' that lands in Orthanc as a DICOM SEG, and /proxy/dicom/ forwards with a timeout."""

import json
import socket
import threading

import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests
from monailabel.client import MONAILabelClient

from mslesion.dev.orthanc import missing_programs

pytestmark = pytest.mark.skipif(bool(missing_programs()), reason=f"Orthanc not installed: {missing_programs()}")

# what the OHIF plugin's MonaiLabelClient.infer adds to every request's params
OHIF_INFER = {"result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False,
              "restore_label_idx": False}


@pytest.fixture(scope="module")
def dicom_client(orthanc, phantoms, tmp_path_factory):
    from mslesion.dev.fixtures import shared_server

    return MONAILabelClient(shared_server().url, tmpdir=str(tmp_path_factory.mktemp("answers")))


def listed(client) -> dict:
    return requests.get(f"{client._server_url}/datastore/?output=all", timeout=60).json()["objects"]


def assert_nrrd_is_the_nifti_answer(nrrd_path: str, nifti_path: str) -> None:
    """Same voxels in the same order (what OHIF copies into its labelmap) and the same world positions (LPS in the
    NRRD, RAS in the NIfTI)."""
    import SimpleITK as sitk

    nifti = nib.load(nifti_path)
    expected = np.asanyarray(nifti.dataobj).astype(np.uint8)
    raw = open(nrrd_path, "rb").read()
    header, _, data = raw.partition(b"\n\n")
    for line in (b"space: left-posterior-superior", b"encoding: raw", b"type: unsigned char"):
        assert line in header, header
    assert data == expected.ravel(order="F").tobytes()  # columns fastest, then rows, then slices
    image = sitk.ReadImage(nrrd_path)
    assert image.GetSize() == expected.shape
    corners = [(0, 0, 0), tuple(n - 1 for n in expected.shape), (expected.shape[0] - 1, 0, 2)]
    for index in corners:
        lps = np.array(image.TransformIndexToPhysicalPoint([int(i) for i in index]))
        ras = (nifti.affine @ [*index, 1])[:3]
        np.testing.assert_allclose(lps * [-1, -1, 1], ras, atol=1e-3)


def test_next_sample_offers_an_unlabelled_flair_series(dicom_client, phantoms):
    objects = listed(dicom_client)
    flairs = {uid for name, uid in phantoms.series.items() if name.endswith("_FLAIR")}
    for strategy in ("first", "random"):
        answer = dicom_client.next_sample(strategy, {})
        assert answer["id"] in flairs, answer  # a SeriesInstanceUID of a FLAIR series, not a T1w one
        assert not objects[answer["id"]]["labels"], "next sample offered a series that has a final label"


def test_infer_answers_the_nrrd_ohif_asks_for_on_the_series_voxels(dicom_client, phantoms):
    series = phantoms.series["sub-02_ses-01_FLAIR"]
    nifti_path, nifti_params = dicom_client.infer("flair_lesion", series, {})
    nrrd_path, nrrd_params = dicom_client.infer("flair_lesion", series, dict(OHIF_INFER))
    assert nifti_path.endswith(".nii.gz") and nrrd_path.endswith(".nrrd")
    assert_nrrd_is_the_nifti_answer(nrrd_path, nifti_path)
    assert nrrd_params["lesions"] == nifti_params["lesions"]
    # the uncompressed NIfTI too; an unknown format is refused before the model runs, naming the ones there are
    nii_path, _ = dicom_client.infer("flair_lesion", series, {"result_extension": ".nii"})
    assert nii_path.endswith(".nii")
    assert np.array_equal(nib.load(nii_path).get_fdata(), nib.load(nifti_path).get_fdata())
    refused = requests.post(f"{dicom_client._server_url}/infer/flair_lesion", params={"image": series},
                            data={"params": json.dumps({"result_extension": ".mha"})}, timeout=60)
    assert refused.status_code == 422 and all(e in refused.text for e in (".mha", ".nii.gz", ".nrrd"))


def test_infer_answers_nrrd_on_a_bids_image_too(client):
    image = "sub-02_ses-01_FLAIR"
    nifti_path, _ = client.infer("flair_lesion", image, {})
    nrrd_path, _ = client.infer("flair_lesion", image, dict(OHIF_INFER))
    assert_nrrd_is_the_nifti_answer(nrrd_path, nifti_path)


def seg_series_of(orthanc, series: str) -> list[str]:
    """SEG series in Orthanc that reference ``series``."""
    study = requests.get(f"{orthanc.dicomweb}/series", params={"SeriesInstanceUID": series}, auth=orthanc.auth,
                         timeout=30).json()[0]["0020000D"]["Value"][0]
    found = []
    segs = requests.get(f"{orthanc.dicomweb}/studies/{study}/series", params={"Modality": "SEG"}, auth=orthanc.auth,
                        timeout=30).json()
    for entry in segs:
        seg_uid = entry["0020000E"]["Value"][0]
        meta = requests.get(f"{orthanc.dicomweb}/studies/{study}/series/{seg_uid}/metadata", auth=orthanc.auth,
                            timeout=30).json()[0]
        if pydicom.Dataset.from_json(meta).ReferencedSeriesSequence[0].SeriesInstanceUID == series:
            found.append(seg_uid)
    return found


def test_ohif_save_sends_label_bin_that_lands_in_orthanc_as_a_seg(dicom_client, orthanc, phantoms, tmp_path):
    from mslesion.dicom.datastore import open_datastore

    series = phantoms.series["sub-02_ses-01_FLAIR"]
    fresh = open_datastore(orthanc.dicomweb, tmp_path / "fresh", auth=orthanc.auth)  # another msapp's cache
    grid = nib.load(fresh.get_image_uri(series))  # the series' grid, in the voxel order OHIF holds it
    truth = nib.load(str(phantoms.truth / "sub-02_ses-01_FLAIR.nii.gz"))
    transform = nib.orientations.ornt_transform(nib.io_orientation(truth.affine), nib.io_orientation(grid.affine))
    moved = truth.as_reoriented(transform)
    np.testing.assert_allclose(moved.affine, grid.affine, atol=1e-2)
    label = (np.asanyarray(moved.dataobj) > 0).astype(np.uint8)
    assert label.any()
    before = set(seg_series_of(orthanc, series))

    url = f"{dicom_client._server_url}/datastore/label"
    params = json.dumps({"label_info": [{"name": "lesion", "idx": 1}]})  # the panel's form: params + label.bin
    answer = requests.put(url, params={"image": series}, data={"params": params},
                          files={"label": ("label.bin", label.ravel(order="F").tobytes(), "application/octet-stream")},
                          timeout=120)
    assert answer.status_code == 200, answer.text
    new = set(seg_series_of(orthanc, series)) - before
    assert len(new) == 1

    short = requests.put(url, params={"image": series}, data={"params": params},
                         files={"label": ("label.bin", b"\0" * 100, "application/octet-stream")}, timeout=60)
    assert short.status_code == 422 and "100 bytes" in short.text

    # the other datastore pulls the newest SEG of the series: the voxels sent
    assert fresh.final_segs()[series] in new
    fresh.pull_label(series, fresh.final_segs()[series])
    pulled = nib.load(fresh.get_label_uri(series, "final"))
    assert np.array_equal(np.asanyarray(pulled.dataobj), label)


def test_proxy_forwards_the_query_to_the_pacs(dicom_client, phantoms):
    studies = requests.get(f"{dicom_client._server_url}/proxy/dicom/qido/studies",
                           params={"PatientID": "MSPHANTOM-02"}, timeout=60)
    assert studies.status_code == 200
    assert {s["00100020"]["Value"][0] for s in studies.json()} == {"MSPHANTOM-02"}


def test_proxy_answers_503_or_504_naming_the_pacs(tmp_path):
    from mslesion.dev.serverproc import free_port
    from mslesion.server.dicom_proxy import forward
    from mslesion.studies import StudyError

    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(StudyError) as refused:
        forward(dead, "studies", "GET", "", {}, None, None, 2.0)
    assert refused.value.status == 503 and dead in refused.value.message

    silent = socket.socket()  # accepts the connection, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    held = []
    threading.Thread(target=lambda: held.append(silent.accept()), daemon=True).start()
    mute = f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web"
    try:
        with pytest.raises(StudyError) as timed_out:
            forward(mute, "studies", "GET", "", {}, None, None, 0.5)
        assert timed_out.value.status == 504 and mute in timed_out.value.message
    finally:
        silent.close()
