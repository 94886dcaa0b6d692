"""Times of the DICOMweb path on this machine: STOW upload, first fetch (WADO-RS + conversion), label -> SEG -> PACS,
and a fresh server's pull of the SEG. One 1 mm whole-brain phantom FLAIR (197x233x189), a local Orthanc.

    PYTHONPATH=lib .venv/bin/python scripts/dicom_timings.py
"""

import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from mslesion.dicom.datastore import open_datastore
from mslesion.dicom.export import upload_folder
from mslesion.dev.orthanc import OrthancProcess
from mslesion.phantoms import PhantomOptions, write_cohort


def timed(call, repeat=3):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times), times


def main():
    with tempfile.TemporaryDirectory(prefix="msapp-dicom-timings-") as folder:
        root = Path(folder)
        write_cohort(root / "studies", cohort="ms", subjects=1, sessions=1, seed=7, labelled=0.0,
                     truth_dir=root / "truth", options=PhantomOptions(sequences=("FLAIR",)))
        with OrthancProcess(root / "orthanc") as orthanc:
            series, upload_s, _ = timed(lambda: upload_folder(root / "studies", orthanc.dicomweb), repeat=1)
            uid = series["sub-01_ses-01_FLAIR"]
            fetch = []
            for i in range(3):
                store = open_datastore(orthanc.dicomweb, root / f"cache{i}")
                start = time.perf_counter()
                path = store.get_image_uri(uid)
                fetch.append(time.perf_counter() - start)
            _, cached_s, _ = timed(lambda: store.get_image_uri(uid))
            image = nib.load(path)
            truth = nib.load(root / "truth" / "sub-01_ses-01_FLAIR.nii.gz")
            transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(truth.affine),
                                                        nib.orientations.io_orientation(image.affine))
            label = np.asanyarray(truth.as_reoriented(transform).dataobj).astype(np.uint8)
            label_path = root / "label.nii.gz"
            nib.save(nib.Nifti1Image(label, image.affine), str(label_path))
            _, save_s, save_all = timed(lambda: store.save_label(uid, str(label_path), "final", {}))
            pulls = []
            for i in range(3):
                fresh = open_datastore(orthanc.dicomweb, root / f"fresh{i}")
                start = time.perf_counter()
                fresh.datalist()
                pulls.append(time.perf_counter() - start)
    print(f"series {image.shape}, {image.shape[2]} slices")
    print(f"STOW-RS upload of the series: {upload_s:.2f} s")
    print(f"first fetch (WADO-RS + NIfTI conversion + cache): median {statistics.median(fetch):.2f} s {fetch}")
    print(f"cached get_image_uri: median {cached_s * 1000:.1f} ms")
    print(f"save label -> DICOM SEG -> STOW: median {save_s:.2f} s {save_all}")
    print(f"fresh datalist (find SEG, fetch image + SEG, convert): median {statistics.median(pulls):.2f} s {pulls}")


if __name__ == "__main__":
    main()
