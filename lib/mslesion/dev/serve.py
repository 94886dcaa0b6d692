"""``make serve-ohif``: a local Orthanc holding the demo studies, and msapp serving them over DICOMweb.

Starts Orthanc (``mslesion.dev.orthanc``, loopback only) with its storage under ``demo/orthanc``, uploads the
demo phantom studies as MR series and their saved labels as DICOM SEG the first time, then runs the MONAI Label
server with ``--studies http://127.0.0.1:<orthanc>/dicom-web``. OHIF is at ``http://HOST:PORT/ohif/``. Orthanc is
stopped when the server stops (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from .orthanc import OrthancProcess
from .serverproc import ROOT


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", default="demo/studies", help="BIDS folder uploaded once (%(default)s)")
    parser.add_argument("--orthanc", default="demo/orthanc", help="Orthanc config, storage and log (%(default)s)")
    parser.add_argument("--orthanc-port", type=int, default=8042)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("server_args", nargs=argparse.REMAINDER, help="more start_server arguments (--conf K V)")
    args = parser.parse_args(argv)

    folder = Path(args.orthanc)
    orthanc = OrthancProcess(folder, args.orthanc_port)
    print(f"Orthanc: {orthanc.dicomweb} (log {orthanc.log})", flush=True)
    try:
        marker = folder / ".uploaded"
        if not marker.exists():
            from ..dicom.export import upload_folder
            from ..dicom.seg import upload_label_folder

            uploaded = upload_folder(Path(args.studies), orthanc.dicomweb, orthanc.auth)
            labels = upload_label_folder(Path(args.studies), uploaded, orthanc.dicomweb, orthanc.auth)
            marker.write_text(f"{len(uploaded)} series, {labels} SEG\n")
            print(f"uploaded {len(uploaded)} series and {labels} labels from {args.studies}", flush=True)
        command = [
            sys.executable, "-m", "monailabel.main", "start_server", "--app", str(ROOT / "apps" / "msapp"),
            "--studies", orthanc.dicomweb, "--host", args.host, "--port", str(args.port),
            "--conf", "dicomweb_cache", str(Path(args.orthanc).resolve().parent / "dicomweb-cache"),
            *[a for a in args.server_args if a != "--"],
        ]
        print(f"OHIF: http://{args.host}:{args.port}/ohif/", flush=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT / "lib"))
                                                          if p))
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0
    finally:
        orthanc.stop()


if __name__ == "__main__":
    sys.exit(main())
