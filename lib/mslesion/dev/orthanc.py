"""Start and stop a real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) with a configuration msapp writes.

Used by the tests (a session fixture), by ``make serve-ohif`` and by ``python -m mslesion.dev.orthanc``.
Storage lives in a folder of the caller's choice; HTTP and DICOM ports are free ports picked at start.
HTTP accepts loopback clients only (``RemoteAccessAllowed: false``) by default; when asked to accept remote
connections, authentication is switched on with a generated password (Orthanc's default would be an open server).
The DICOM port (Orthanc cannot bind it to loopback) refuses store/find/get/move from peers it does not know, and
it knows none.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

from .serverproc import free_port, stop_process_group, wait_until_answering

ORTHANC = os.environ.get("MSAPP_ORTHANC", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = os.environ.get("MSAPP_ORTHANC_DICOMWEB", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DEBIAN_PACKAGES = "orthanc orthanc-dicomweb"


class OrthancUnavailable(RuntimeError):
    """Orthanc or its DICOMweb plugin is not installed, or did not come up."""


def missing_programs() -> list[str]:
    """What is absent for a local Orthanc with DICOMweb (empty when both are installed)."""
    missing = []
    if not (os.access(ORTHANC, os.X_OK) or shutil.which("Orthanc")):
        missing.append(ORTHANC)
    if not os.path.exists(DICOMWEB_PLUGIN):
        missing.append(DICOMWEB_PLUGIN)
    return missing


def write_config(folder: Path, http_port: int, dicom_port: int, remote: bool = False) -> tuple[Path, tuple | None]:
    """Orthanc's configuration for msapp; returns its path and the (user, password) it requires, if any."""
    folder.mkdir(parents=True, exist_ok=True)
    credentials = ("msapp", secrets.token_urlsafe(18)) if remote else None
    config = {
        "Name": "msapp-orthanc",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "MSAPP",
        "RemoteAccessAllowed": bool(remote),
        "AuthenticationEnabled": bool(remote),
        "RegisteredUsers": {credentials[0]: credentials[1]} if credentials else {},
        "DicomModalities": {},
        # Orthanc 1.10 cannot bind its DICOM port to loopback: refuse every DICOM request from unregistered peers
        # (msapp talks DICOMweb only); C-ECHO stays allowed for connectivity checks
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "OrthancPeers": {},
        "HttpsVerifyPeers": True,
        "StorageCompression": False,
        "SaveJobs": False,
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 8,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                     "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    os.chmod(path, 0o600)  # it may hold a password
    return path, credentials


class OrthancProcess:
    """A running Orthanc; ``dicomweb`` is its DICOMweb root (what ``--studies`` takes)."""

    def __init__(self, folder: Path, http_port: int | None = None, dicom_port: int | None = None,
                 remote: bool = False, timeout: float = 60):
        missing = missing_programs()
        if missing:
            raise OrthancUnavailable(
                f"Orthanc with DICOMweb is not installed ({', '.join(missing)} missing): "
                f"apt-get install {DEBIAN_PACKAGES}"
            )
        self.folder = Path(folder).resolve()  # Orthanc reads relative paths from its own working directory
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.config, self.credentials = write_config(self.folder, self.http_port, self.dicom_port, remote)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.log = self.folder / "orthanc.log"
        self.process = subprocess.Popen(
            [ORTHANC if os.access(ORTHANC, os.X_OK) else "Orthanc", str(self.config)],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._wait_until_up(timeout)

    @property
    def auth(self) -> tuple | None:
        return self.credentials

    def _answers(self) -> bool:
        return requests.get(f"{self.dicomweb}/studies", auth=self.auth, timeout=2).status_code == 200

    def _wait_until_up(self, timeout: float) -> None:
        wait_until_answering(self.process, self._answers, timeout, self.log, "Orthanc", error=OrthancUnavailable,
                             on_timeout=self.stop)

    def stop(self) -> None:
        stop_process_group(self.process)

    def __enter__(self) -> OrthancProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run a local Orthanc with DICOMweb for msapp (Ctrl-C stops it).")
    parser.add_argument("--folder", default="demo/orthanc", help="configuration, storage and log (default %(default)s)")
    parser.add_argument("--port", type=int, default=8042, help="HTTP port, DICOMweb at /dicom-web (%(default)s)")
    parser.add_argument("--dicom-port", type=int, default=None, help="DICOM port (default: a free one)")
    parser.add_argument("--remote", action="store_true",
                        help="accept connections from other machines (authentication on, generated password)")
    args = parser.parse_args(argv)
    orthanc = OrthancProcess(Path(args.folder), args.port, args.dicom_port, remote=args.remote)
    print(f"Orthanc DICOMweb at {orthanc.dicomweb} (log {orthanc.log})", flush=True)
    if orthanc.credentials:
        print(f"user {orthanc.credentials[0]}, password in {orthanc.config}", flush=True)
    try:
        while orthanc.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        orthanc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
