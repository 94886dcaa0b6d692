"""One Orthanc and one uploaded phantom cohort per test process, shared by the DICOM test modules.

Test modules wrap these in their own fixtures; the Orthanc is stopped when the process exits.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .orthanc import OrthancProcess

_shared: dict = {}


def shared_orthanc() -> OrthancProcess:
    if "orthanc" not in _shared:
        folder = Path(tempfile.mkdtemp(prefix="msapp-orthanc-"))
        orthanc = OrthancProcess(folder)
        _shared["orthanc"] = orthanc

        def stop():
            orthanc.stop()
            shutil.rmtree(folder, ignore_errors=True)

        atexit.register(stop)
    return _shared["orthanc"]


@dataclass
class DicomPhantoms:
    """A small MS phantom cohort as BIDS NIfTI (with ground truth) and as MR series in Orthanc."""

    root: Path
    series: dict[str, str]  # BIDS image id -> SeriesInstanceUID

    @property
    def studies(self) -> Path:
        return self.root / "studies"

    @property
    def truth(self) -> Path:
        return self.root / "truth"


def shared_phantoms() -> DicomPhantoms:
    """Subject 01 with two visits, subject 02 with one; FLAIR and T1w at 2 mm (small uploads, same geometry code)."""
    if "phantoms" not in _shared:
        from ..dicom.export import upload_folder
        from ..phantoms import PhantomOptions, write_cohort

        orthanc = shared_orthanc()
        root = Path(tempfile.mkdtemp(prefix="msapp-dicom-phantoms-"))
        atexit.register(shutil.rmtree, root, True)
        options = PhantomOptions(sequences=("FLAIR", "T1w"), spacing=(2.0, 2.0, 2.0))
        write_cohort(root / "studies", cohort="ms", subjects=1, sessions=2, seed=23, labelled=0.0,
                     truth_dir=root / "truth", options=options)
        write_cohort(root / "studies", cohort="ms", subjects=1, sessions=1, seed=23, labelled=0.0,
                     truth_dir=root / "truth", options=options, first_subject=2)
        series = upload_folder(root / "studies", orthanc.dicomweb, orthanc.auth)
        _shared["phantoms"] = DicomPhantoms(root, series)
    return _shared["phantoms"]


SERVER_MODELS = "flair_lesion,new_lesion,enhancement_prediction"


def shared_server():
    """The msapp server on the shared Orthanc (after the phantoms are uploaded), with its own model dir and cache."""
    if "server" not in _shared:
        from .serverproc import ServerProcess

        orthanc, _ = shared_orthanc(), shared_phantoms()
        work = Path(tempfile.mkdtemp(prefix="msapp-dicom-server-"))
        server = ServerProcess(orthanc.dicomweb, work / "model", work / "server.log",
                               conf={"models": SERVER_MODELS, "dicomweb_cache": work / "cache"},
                               env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
        _shared["server"] = server

        def stop():
            server.stop()
            shutil.rmtree(work, ignore_errors=True)

        atexit.register(stop)
    return _shared["server"]
