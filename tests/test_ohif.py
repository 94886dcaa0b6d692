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

from mslesion.dev.orthanc import missing_programs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
pytestmark = [
    pytest.mark.skipif(bool(missing_programs()), reason=f"Orthanc not installed: {missing_programs()}"),
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server(phantoms):
    from mslesion.dev.fixtures import shared_server

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
    from mslesion.dev.fixtures import shared_orthanc

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

    from mslesion.dev.fixtures import shared_orthanc
    from mslesion.dicom.export import dicomweb_client, to_lps
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


CHROMEDRIVER = shutil.which("chromedriver")
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C WebDriver key of an element reference


class WebDriver:
    """Headless chromium driven over the W3C WebDriver protocol (Debian's chromedriver), with plain requests."""

    def __init__(self, profile: str):
        from mslesion.dev.serverproc import free_port

        port = free_port()
        self.process = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{port}"
        self.wait_for(lambda: self._up(), "chromedriver to start")
        options = {"binary": CHROMIUM, "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                                "--window-size=1400,900", f"--user-data-dir={profile}"]}
        caps = {"browserName": "chrome", "goog:chromeOptions": options, "goog:loggingPrefs": {"browser": "ALL"}}
        answer = requests.post(f"{self.base}/session", json={"capabilities": {"alwaysMatch": caps}}, timeout=120)
        self.session = f"{self.base}/session/{answer.json()['value']['sessionId']}"

    def _up(self) -> bool:
        try:
            return requests.get(f"{self.base}/status", timeout=2).ok
        except requests.RequestException:
            return False

    def call(self, method: str, path: str, body: dict | None = None):
        answer = requests.request(method, self.session + path, json=body, timeout=300).json()
        return answer["value"]

    def open(self, url: str) -> None:
        self.call("POST", "/url", {"url": url})

    def script(self, code: str, *args):
        return self.call("POST", "/execute/sync", {"script": code, "args": list(args)})

    def elements(self, xpath: str) -> list[str]:
        return [e[ELEMENT] for e in self.call("POST", "/elements", {"using": "xpath", "value": xpath})]

    def click(self, element: str, times: int = 1) -> None:
        clicks = [{"type": "pointerDown", "button": 0}, {"type": "pointerUp", "button": 0}] * times
        self.call("POST", "/actions", {"actions": [{"type": "pointer", "id": "mouse", "parameters": {
            "pointerType": "mouse"}, "actions": [{"type": "pointerMove", "origin": {ELEMENT: element}, "x": 0,
                                                  "y": 0}, *clicks]}]})

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.call("GET", "/screenshot")))

    def console(self) -> list[str]:
        return [entry["message"] for entry in self.call("POST", "/se/log", {"type": "browser"})]

    @staticmethod
    def wait_for(condition, what: str, tries: int = 240):
        """Poll every half second: the page's scripts load studies and run models at their own pace."""
        import time

        for _ in range(tries):
            value = condition()
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"waited in vain for {what}")

    def quit(self) -> None:
        try:
            requests.delete(self.session, timeout=30)
        finally:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.mark.skipif(CHROMEDRIVER is None, reason="chromedriver is not installed (apt-get install chromium-driver)")
def open_panel_on_the_flair(browser, server, study: str):
    """OHIF's MONAI Label mode on a study, the FLAIR in the viewports, the panel connected; returns a Run button."""
    browser.open(f"{server.url}/info/")  # the panel's server URL is a cookie (default: this host, port 8000)
    browser.script("document.cookie = 'MONAILABEL_SERVER_URL=' + escape(arguments[0]) + '; path=/'", f"{server.url}/")
    browser.open(f"{server.url}/ohif/monai-label?StudyInstanceUIDs={study}")
    (thumbnail,) = browser.wait_for(lambda: browser.elements("//*[text()='AX FLAIR']"), "the FLAIR thumbnail")
    browser.click(thumbnail, times=2)  # show the FLAIR in the viewports
    browser.wait_for(lambda: browser.script("return document.body.innerText").count("AX FLAIR") >= 4,
                     "the FLAIR in the three viewports")
    (connect,) = browser.elements("//input[@id='monailabelServerURL']/ancestor::tr[1]//button")
    browser.click(connect)
    return browser.wait_for(lambda: browser.elements("//button[text()='Run']"), "the panel's Run buttons")[0]


def test_run_in_the_monai_label_panel_fills_the_labelmap_with_the_servers_answer(server, phantoms, tmp_path):
    """Click Run (flair_lesion) in OHIF's MONAI Label panel on a FLAIR series: the panel asks for NRRD, and its
    labelmap then holds exactly the lesion voxels of the server's NIfTI answer (same voxels, same order)."""
    import nibabel as nib
    from monailabel.client import MONAILabelClient

    from mslesion.dev.fixtures import shared_orthanc

    orthanc = shared_orthanc()
    series = phantoms.series["sub-01_ses-02_FLAIR"]
    study = requests.get(f"{orthanc.dicomweb}/series", params={"SeriesInstanceUID": series}, auth=orthanc.auth,
                         timeout=30).json()[0]["0020000D"]["Value"][0]
    answer, params = MONAILabelClient(server.url, tmpdir=str(tmp_path)).infer("flair_lesion", series, {})
    expected = np.flatnonzero(np.asanyarray(nib.load(answer).dataobj).ravel(order="F"))
    assert params["lesions"]["count"] > 0 and expected.size > 0  # something to see

    browser = WebDriver(str(tmp_path / "profile"))
    try:
        run = open_panel_on_the_flair(browser, server, study)
        assert browser.script("return document.querySelector('select.selectBox').value") == "flair_lesion"
        browser.click(run)
        count_lesion_voxels = """
            const volume = window.services.segmentationService.getLabelmapVolume('1');
            if (!volume) return null;
            const data = volume.voxelManager.getCompleteScalarDataArray(), found = [];
            for (let i = 0; i < data.length; i++) if (data[i]) found.push(i);
            return found.length ? found : null;"""
        shown = browser.wait_for(lambda: browser.script(count_lesion_voxels), "the answer in the labelmap")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "ohif-monai-label-run.png")
        console = browser.console()
    finally:
        browser.quit()
    assert not [line for line in console if "Failed to Run" in line]
    assert np.array_equal(np.asarray(shown), expected)


def test_new_lesions_run_in_the_panel_show_as_their_own_segment(server, phantoms, tmp_path):
    """Run new_lesion on the follow-up FLAIR in OHIF's panel: "new MS lesion" is a segment of its own, holding exactly
    the server's new-lesion voxels (value 2), and "MS lesion" exactly its other lesions (value 1)."""
    import nibabel as nib
    from monailabel.client import MONAILabelClient

    from mslesion.dev.fixtures import shared_orthanc

    orthanc = shared_orthanc()
    series = phantoms.series["sub-01_ses-02_FLAIR"]
    study = requests.get(f"{orthanc.dicomweb}/series", params={"SeriesInstanceUID": series}, auth=orthanc.auth,
                         timeout=30).json()[0]["0020000D"]["Value"][0]
    answer, _ = MONAILabelClient(server.url, tmpdir=str(tmp_path)).infer("new_lesion", series, {})
    flat = np.asanyarray(nib.load(answer).dataobj).ravel(order="F")
    assert {1, 2} <= set(np.unique(flat).tolist())  # both kinds to see

    browser = WebDriver(str(tmp_path / "profile"))
    try:
        run = open_panel_on_the_flair(browser, server, study)
        browser.script("""
            const select = document.querySelector('select.selectBox');
            const setter = Object.getOwnPropertyDescriptor(HTMLSelectElement.prototype, 'value').set;
            setter.call(select, 'new_lesion');
            select.dispatchEvent(new Event('change', {bubbles: true}));""")
        assert browser.script("return document.querySelector('select.selectBox').value") == "new_lesion"
        browser.click(run)
        # OHIF numbers its segments by the sorted app-level label names and remaps each answer onto them by name
        shown = """
            const seg = window.services.segmentationService.getSegmentation('1');
            const volume = window.services.segmentationService.getLabelmapVolume('1');
            if (!seg || !volume) return null;
            const index = {};
            Object.values(seg.segments).filter(s => s).forEach(s => { index[s.label] = s.segmentIndex; });
            const data = volume.voxelManager.getCompleteScalarDataArray(), lesion = [], fresh = [];
            for (let i = 0; i < data.length; i++) {
                if (data[i] === index['new MS lesion']) fresh.push(i);
                else if (data[i] === index['MS lesion']) lesion.push(i);
            }
            return fresh.length ? [fresh, lesion, index] : null;"""
        new_voxels, old_voxels, index = browser.wait_for(lambda: browser.script(shown), "new lesions in the labelmap")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "ohif-new-lesion-run.png")
    finally:
        browser.quit()
    assert index["new MS lesion"] != index["MS lesion"]  # a segment of its own
    assert np.array_equal(np.asarray(new_voxels), np.flatnonzero(flat == 2))
    assert np.array_equal(np.asarray(old_voxels), np.flatnonzero(flat == 1))
