"""A real Orthanc (Debian packages) started with msapp's configuration, and phantom studies uploaded over STOW-RS."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from mslesion.dev.orthanc import OrthancProcess, missing_programs, write_config

pytestmark = pytest.mark.skipif(bool(missing_programs()), reason=f"Orthanc not installed: {missing_programs()}")


def qido(orthanc, path, **params):
    answer = requests.get(f"{orthanc.dicomweb}/{path}", params=params, auth=orthanc.auth, timeout=30)
    answer.raise_for_status()
    return answer.json() if answer.content else []


def value(entry, tag):
    return (entry.get(tag, {}).get("Value") or [None])[0]


def test_uploaded_series_are_found_with_their_patient_study_and_description(orthanc, phantoms):
    assert len(phantoms.series) == 6  # 01: two visits, 02: one visit; FLAIR and T1w each
    studies = qido(orthanc, "studies", PatientID="MSPHANTOM-01", includefield="00080020")
    assert len(studies) == 2
    dates = sorted(value(s, "00080020") for s in studies)
    assert dates[0] < dates[1]  # the second visit is later
    series = qido(orthanc, "series", Modality="MR", includefield="0008103E")
    found = {value(s, "0020000E"): value(s, "0008103E") for s in series}
    for image_id, series_uid in phantoms.series.items():
        assert found[series_uid] == {"FLAIR": "AX FLAIR", "T1w": "AX T1"}[image_id.rsplit("_", 1)[1]]


def test_series_geometry_gives_back_the_phantom_voxels_in_place(orthanc, phantoms, tmp_path):
    """Retrieve one series over WADO-RS, convert it like the server does, compare with the NIfTI it came from."""
    from mslesion.dicom.export import dicomweb_client
    from mslesion.dicom.series import series_to_nifti

    image_id = "sub-01_ses-02_FLAIR"
    client = dicomweb_client(orthanc.dicomweb, orthanc.auth)
    out = series_to_nifti(client, phantoms.series[image_id], tmp_path / "flair.nii.gz")
    original = nib.as_closest_canonical(nib.load(phantoms.studies / f"{image_id}.nii.gz"))
    back = nib.as_closest_canonical(nib.load(out))
    assert back.shape == original.shape
    np.testing.assert_allclose(back.affine, original.affine, atol=1e-3)
    assert np.array_equal(np.asanyarray(back.dataobj), np.asanyarray(original.dataobj))


def test_remote_orthanc_requires_the_generated_credentials(tmp_path):
    _, credentials = write_config(Path(tmp_path) / "local", 1, 2, remote=False)
    assert credentials is None
    with OrthancProcess(tmp_path / "remote", remote=True) as remote:
        assert remote.credentials and len(remote.credentials[1]) >= 20
        assert requests.get(f"{remote.dicomweb}/studies", timeout=10).status_code == 401
        assert requests.get(f"{remote.dicomweb}/studies", auth=remote.credentials, timeout=10).status_code == 200


def test_dicom_port_refuses_a_store_from_an_unknown_peer(orthanc, phantoms):
    """Orthanc cannot bind its DICOM port to loopback, so msapp's config refuses C-STORE from peers it does not know."""
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    from mslesion.dicom.export import series_datasets

    image = nib.load(phantoms.studies / "sub-02_ses-01_T1w.nii.gz")
    intruder = series_datasets(image, "99", "01", "T1w", namespace="intruder")[0]
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(MRImageStorage, intruder.file_meta.TransferSyntaxUID)
    association = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title="MSAPP")
    if association.is_established:
        status = association.send_c_store(intruder)
        association.release()
        assert "Status" not in status or status.Status != 0x0000  # refused, or the association dropped
    assert qido(orthanc, "studies", PatientID="MSPHANTOM-99") == []
