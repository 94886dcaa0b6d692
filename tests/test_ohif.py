"""OHIF, served by msapp at /ohif/, in a real headless browser (Debian's chromium) against a real Orthanc.

The study list must show the phantom studies (QIDO-RS through the server's /proxy/dicom/), and a study must open
in the viewer with its series and pixels (WADO-RS). Screenshots are kept in tests/artifacts/ (git-ignored).
"""

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from mslesion.dicom.orthanc import missing_programs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
pytestmark = [
    pytest.mark.skipif(bool(missing_programs()), reason=f"Orthanc not installed: {missing_programs()}"),
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def phantoms():
    from mslesion.dicom.fixtures import shared_phantoms

    return shared_phantoms()


@pytest.fixture(scope="module")
def server(phantoms):
    from mslesion.dicom.fixtures import shared_server

    return shared_server()


def browse(url: str, *action: str) -> str:
    """Load a page in headless chromium (fresh profile), let it run, and dump its DOM or take a screenshot."""
    with tempfile.TemporaryDirectory(prefix="msapp-chromium-") as profile:
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=30000", *action, url],
            capture_output=True, text=True, timeout=300,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def visit(url: str, name: str) -> tuple[str, Path]:
    """The page's DOM after it ran, and a screenshot of it kept as a test artifact (one browser run for both)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    dom = browse(url, "--dump-dom", f"--screenshot={path}")
    assert path.exists() and path.stat().st_size > 10_000
    print(f"screenshot: {path}")
    return dom, path


def test_study_list_shows_the_phantom_studies(server, phantoms):
    dom, _ = visit(f"{server.url}/ohif/", "ohif-study-list.png")
    assert "Study List" in dom
    for patient in ("MSPHANTOM-01", "MSPHANTOM-02"):
        assert patient in dom
    assert dom.count("MSPHANTOM-01") >= 2  # both visits of the longitudinal patient


def test_a_study_opens_in_the_viewer_with_its_series_and_pixels(server, phantoms):
    from mslesion.dicom.fixtures import shared_orthanc

    orthanc = shared_orthanc()
    study = requests.get(f"{orthanc.dicomweb}/series", params={"SeriesInstanceUID": phantoms.series[
        "sub-01_ses-01_FLAIR"]}, auth=orthanc.auth, timeout=30).json()[0]["0020000D"]["Value"][0]
    url = f"{server.url}/ohif/viewer?StudyInstanceUIDs={study}"
    dom, shot = visit(url, "ohif-viewer.png")
    assert "AX FLAIR" in dom and "AX T1" in dom  # the study's series, named from their SeriesDescription
    assert "<canvas" in dom
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    viewport = pixels[100:750, 300:1350]  # right of the study browser, below the toolbar
    assert viewport.std() > 5 and (viewport > 60).mean() > 0.001  # an image is drawn, not an empty black pane


def test_monai_label_mode_shows_the_panel_and_a_stored_label(server, phantoms):
    """OHIF's MONAI Label mode on a study whose FLAIR has a DICOM SEG (written by msapp's SEG writer)."""
    import nibabel as nib

    from mslesion.dicom.export import dicomweb_client, to_lps
    from mslesion.dicom.fixtures import shared_orthanc
    from mslesion.dicom.seg import label_to_seg, segment_names
    from mslesion.dicom.series import retrieve_instances

    orthanc = shared_orthanc()
    client = dicomweb_client(orthanc.dicomweb, orthanc.auth)
    series = phantoms.series["sub-02_ses-01_FLAIR"]
    data, affine = to_lps(nib.load(phantoms.truth / "sub-02_ses-01_FLAIR.nii.gz"))
    sources = retrieve_instances(client, series)
    seg = label_to_seg(np.asarray(data), affine, sources, segment_names("FLAIR", np.unique(data).tolist()),
                       description="MS lesions (browser test)")
    client.store_instances([seg])
    url = f"{server.url}/ohif/monai-label?StudyInstanceUIDs={sources[0].StudyInstanceUID}"
    dom, _ = visit(url, "ohif-monai-label.png")
    assert "MONAI Label" in dom  # the panel that runs the server's models
    assert "AX FLAIR" in dom and "MS lesions (browser test)" in dom  # the SEG is listed with the study's series
