"""Bad-input suite against a real msapp server: every bad request gets a 4xx (never a 5xx) whose message names
the problem, and afterwards every image and label is byte-identical and no file appeared outside the studies folder.

The server runs on its own copy of the phantom datastore, with its temp folder (TMPDIR) and session store inside
this module's work folder, so that anything a refused request leaves behind is seen. Two files are put in the copy
before the server starts: a truncated FLAIR (as if copied in by hand) and a primary image of a multi-input model
whose companion is missing.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from conftest import tree_digest
from mslesion.dev.serverproc import ServerProcess

pytestmark = pytest.mark.server

FLAIR2 = "sub-02_ses-01_FLAIR"  # unlabelled
FLAIR1 = "sub-01_ses-01_FLAIR"  # labelled: its label must survive every bad request byte for byte
T1W2 = "sub-02_ses-01_T1w"
BROKEN = "sub-08_ses-01_FLAIR"  # truncated file put in the studies folder by hand
MISSING = "sub-09_ses-01"  # a primary image whose companion is absent


def files_under(folder: Path, skip: tuple[str, ...] = ()) -> set[str]:
    out = set()
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and not any(str(rel).startswith(s) for s in skip):
            out.add(str(rel))
    return out


@dataclass
class Suite:
    server: ServerProcess
    work: Path
    tmp: Path
    sessions: Path
    files: Path
    image_shape: tuple
    affine: np.ndarray
    multi_input: tuple[str, list[str]] | None
    before: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def suite(phantom_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("bad_input_suite")
    studies, tmp, sessions, files = work / "studies", work / "tmp", work / "sessions", work / "files"
    shutil.copytree(phantom_root / "studies", studies)
    for folder in (tmp, sessions, files):
        folder.mkdir()
    flair = (studies / f"{FLAIR2}.nii.gz").read_bytes()
    (studies / f"{BROKEN}.nii.gz").write_bytes(flair[: len(flair) // 2])
    image = nib.load(studies / f"{FLAIR2}.nii.gz")
    server = ServerProcess(
        studies, work / "model", work / "server.log",
        env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false", "TMPDIR": str(tmp), "MONAI_LABEL_SESSION_PATH": str(sessions)},
    )
    try:
        models = requests.get(f"{server.url}/info/", timeout=30).json()["models"]
        multi = next(((n, m["inputs"]) for n, m in models.items() if len(m.get("inputs") or []) > 1), None)
        if multi:  # the primary sequence of a multi-input model, uploaded without its companions
            with (studies / f"{FLAIR2}.nii.gz").open("rb") as f:
                answer = requests.put(f"{server.url}/datastore/image", params={"image": f"{MISSING}_{multi[1][0]}"},
                                      files={"file": ("x.nii.gz", f)}, timeout=120)
            assert answer.status_code == 200, answer.text
        s = Suite(server, work, tmp, sessions, files, tuple(image.shape), image.affine.copy(), multi)
        s.before = {
            "studies": tree_digest(studies),
            "index": requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"],
            "outside": files_under(work, skip=("studies", "files")),
            "tmp": files_under(tmp),
        }
        yield s
    finally:
        server.stop()


# -- files the cases send ------------------------------------------------------------------------------------------


def nifti_bytes(data: np.ndarray, affine: np.ndarray | None = None, gz: bool = True, header=None) -> bytes:
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine, header)
    raw = img.to_bytes()
    return gzip.compress(raw, 1) if gz else raw


def small(dtype=np.int16, shape=(32, 32, 24), value=None) -> np.ndarray:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 500, size=shape).astype(dtype)
    if value is not None:
        data.flat[100] = value
    return data


def with_geometry(data: np.ndarray, affine: np.ndarray, pixdim=None, gz: bool = True) -> bytes:
    """A NIfTI whose header holds this sform and pixdim as they are (nibabel would refuse to write a singular one)."""
    raw = nib.Nifti1Image(data, np.eye(4)).to_bytes()
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    header.set_sform(affine, code=1)
    header["qform_code"] = 0
    header["pixdim"][1:4] = np.sqrt((affine[:3, :3] ** 2).sum(axis=0)) if pixdim is None else pixdim
    raw = header.binaryblock + raw[348:]
    return gzip.compress(raw, 1) if gz else raw


def header_claiming(shape: tuple[int, ...], gz: bool) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_sform(np.eye(4), code=1)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 4096
    return gzip.compress(raw) if gz else raw


def dicom_bytes() -> bytes:
    return b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + os.urandom(600)


def negative_pixdim() -> bytes:
    raw = nib.Nifti1Image(small(), np.eye(4)).to_bytes()
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    header["pixdim"][1:4] = [-1.0, 1.0, 1.0]
    header["sform_code"] = header["qform_code"] = 0
    return header.binaryblock + raw[348:]


def label(s: Suite, data=None, dtype=np.uint8, affine=None, shape=None) -> bytes:
    if data is None:
        data = np.zeros(shape or s.image_shape, dtype)
    return nifti_bytes(np.asarray(data), s.affine if affine is None else affine)


def shifted(s: Suite) -> np.ndarray:
    affine = s.affine.copy()
    affine[:3, 3] += 5
    return affine


def with_values(s: Suite, value, dtype) -> np.ndarray:
    data = np.zeros(s.image_shape, dtype)
    data[50:60, 50:60, 50:60] = value
    return data


def checkpoint_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": state}, buffer)
    return buffer.getvalue()


# -- the cases ------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    method: str
    path: str
    status: int
    words: tuple[str, ...]
    params: dict | Callable | None = None
    files: Callable | None = None  # Suite -> {field: (name, bytes)}
    data: dict | None = None
    json: object = None
    body: str | None = None
    needs: str | None = None  # "multi": needs a multi-input model; or a model name that must be served


def upload(name: str, content: Callable[[Suite], bytes], image: str = "sub-20_ses-01_FLAIR", **extra) -> Case:
    status = extra.pop("status", 422)
    words = extra.pop("words")
    return Case("PUT", "/datastore/image", status, words, params={"image": image},
                files=lambda s: {"file": (name, content(s))}, **extra)


def save(content: Callable[[Suite], bytes], image: str = FLAIR2, tag: str = "final", name="label.nii.gz", **extra):
    status = extra.pop("status", 422)
    words = extra.pop("words")
    return Case("PUT", "/datastore/label", status, words, params={"image": image, "tag": tag},
                files=lambda s: {"label": (name, content(s))}, **extra)


def phantom(s: Suite) -> bytes:
    return (s.server.studies / f"{FLAIR2}.nii.gz").read_bytes()


CASES = {
    # uploads that are not a readable, plausible 3D NIfTI
    "upload-truncated-nii-gz": upload("x.nii.gz", lambda s: phantom(s)[: len(phantom(s)) // 3],
                                      words=("not a readable NIfTI",)),
    "upload-truncated-nii": upload("x.nii", lambda s: nifti_bytes(small(), gz=False)[:2000],
                                   words=("truncated",)),
    "upload-corrupt-gzip": upload("x.nii.gz", lambda s: b"\x1f\x8b\x08\x00" + os.urandom(5000),
                                  words=("not a readable NIfTI",)),
    "upload-random-bytes-as-nii": upload("x.nii", lambda s: os.urandom(4000), words=("not a readable NIfTI",)),
    "upload-empty-file": upload("x.nii.gz", lambda s: b"", words=("empty",)),
    "upload-corrupt-dicom-named-dcm": upload("x.dcm", lambda s: dicom_bytes(), status=415, words=("DICOM", "dcm2niix")),
    "upload-corrupt-dicom-named-nifti": upload("x.nii.gz", lambda s: dicom_bytes(), status=415,
                                               words=("DICOM", "convert")),
    "upload-png": upload("x.png", lambda s: b"\x89PNG\r\n\x1a\n" + os.urandom(100), status=415,
                         words=("not a NIfTI file name",)),
    "upload-2d-image": upload("x.nii.gz", lambda s: nifti_bytes(small(shape=(64, 64))), words=("3D", "2D")),
    "upload-2d-single-slice": upload("x.nii.gz", lambda s: nifti_bytes(small(shape=(64, 64, 1))), words=("2D",)),
    "upload-4d-image": upload("x.nii.gz", lambda s: nifti_bytes(small(shape=(32, 32, 24, 3))),
                              words=("4D", "3 volumes")),
    "upload-nan-voxels": upload("x.nii.gz", lambda s: nifti_bytes(small(np.float32, value=np.nan)), words=("NaN",)),
    "upload-infinite-voxels": upload("x.nii.gz", lambda s: nifti_bytes(small(np.float32, value=np.inf)),
                                     words=("infinite",)),
    "upload-all-zero-image": upload("x.nii.gz", lambda s: nifti_bytes(np.zeros((32, 32, 24), np.int16)),
                                    words=("blank", "every voxel is 0")),
    "upload-voxel-size-zero": upload("x.nii.gz", lambda s: with_geometry(small(), np.diag([0.0, 1, 1, 1])),
                                     words=("voxel size", "(0, 1, 1)")),
    "upload-voxel-size-negative": upload("x.nii", lambda s: negative_pixdim(), words=("voxel size", "-1")),
    "upload-voxel-size-1e6-mm": upload("x.nii.gz", lambda s: with_geometry(small(), np.diag([1e6, 1e6, 1e6, 1])),
                                       words=("voxel size", "1e+06")),
    "upload-singular-affine": upload("x.nii.gz", lambda s: with_geometry(small(), np.array(
        [[1.0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])), words=("degenerate",)),
    "upload-header-claims-4000-cubed-gz": upload("x.nii.gz", lambda s: header_claiming((4000, 4000, 4000), True),
                                                 status=413, words=("4000x4000x4000", "GB", "at most")),
    "upload-header-claims-4000-cubed-nii": upload("x.nii", lambda s: header_claiming((4000, 4000, 4000), False),
                                                  status=413, words=("4000x4000x4000",)),
    "upload-complex-voxels": upload("x.nii.gz", lambda s: nifti_bytes(small(np.complex64)), words=("voxel type",)),
    "upload-id-path-traversal": upload("x.nii.gz", lambda s: nifti_bytes(small()), image="../evil_FLAIR",
                                       words=("not allowed", "no paths")),
    "upload-id-absolute-path": upload("x.nii.gz", lambda s: nifti_bytes(small()), image="/tmp/evil",
                                      words=("not allowed",)),
    "upload-id-odd-characters": upload("x.nii.gz", lambda s: nifti_bytes(small()), image="sub-01;rm -rf *",
                                       words=("not allowed",)),
    "upload-filename-dotdot-no-id": Case("PUT", "/datastore/image", 422, ("not allowed",),
                                         files=lambda s: {"file": ("..nii.gz", nifti_bytes(small()))}),
    "upload-existing-id-overwrites-nothing": upload("x.nii.gz", phantom, image=FLAIR1, status=409,
                                                    words=("already exists",)),
    "upload-without-file": Case("PUT", "/datastore/image", 422, ("no image", "file"), params={"image": "sub-20"},
                                data={"params": "{}"}),
    "upload-malformed-params": upload("x.nii.gz", lambda s: nifti_bytes(small()), data={"params": "{oops"},
                                      words=("not valid JSON",)),
    "upload-params-not-object": upload("x.nii.gz", lambda s: nifti_bytes(small()), data={"params": "[1, 2]"},
                                       words=("JSON object",)),
    "upload-deprecated-route-garbage": Case("PUT", "/datastore/", 422, ("not a readable NIfTI",),
                                            params={"image": "sub-21_ses-01_FLAIR"},
                                            files=lambda s: {"file": ("x.nii.gz", b"garbage")}),
    # labels that do not fit their image
    "label-wrong-shape": save(lambda s: label(s, shape=(10, 10, 10)), words=("shape (10, 10, 10)",)),
    "label-wrong-affine": save(lambda s: label(s, affine=shifted(s)), words=("affine", "5 mm")),
    "label-value-7-on-flair": save(lambda s: label(s, with_values(s, 7, np.uint8)), words=("[0, 1, 2]", "[7]")),
    "label-fractional-values": save(lambda s: label(s, with_values(s, 0.5, np.float32)), words=("whole numbers",)),
    "label-negative-values": save(lambda s: label(s, with_values(s, -1, np.int16)), words=("[-1]",)),
    "label-value-300-on-t1w": save(lambda s: label(s, with_values(s, 300, np.uint16)), image=T1W2,
                                   words=("0..255", "[300]")),
    "label-4d": save(lambda s: nifti_bytes(np.zeros((*s.image_shape[:2], 20, 2), np.uint8), s.affine),
                     words=("4D",)),
    "label-nan": save(lambda s: label(s, with_values(s, np.nan, np.float32)), words=("NaN",)),
    "label-corrupt": save(lambda s: b"not a nifti at all", words=("not a readable NIfTI",)),
    "label-truncated-over-a-saved-label": save(
        lambda s: (s.server.studies / "labels" / "final" / f"{FLAIR1}.nii.gz").read_bytes()[:5000], image=FLAIR1,
        words=("not a readable NIfTI",)),
    "label-for-unknown-image": save(lambda s: label(s), image="sub-77_ses-01_FLAIR", status=404,
                                    words=("sub-77_ses-01_FLAIR", "not in the datastore")),
    "label-image-id-traversal": save(lambda s: label(s), image=f"../studies/{FLAIR1}", words=("not allowed",)),
    "label-image-id-absolute": save(lambda s: label(s), image=f"/etc/{FLAIR1}", words=("not allowed",)),
    "label-tag-traversal": save(lambda s: label(s), tag="../../escaped", words=("tag", "not allowed")),
    "label-tag-absolute": save(lambda s: label(s), tag="/tmp/escaped", words=("tag", "not allowed")),
    "label-tag-odd-characters": save(lambda s: label(s), tag="fin al;", words=("tag", "not allowed")),
    "label-not-nifti-name": save(lambda s: label(s), name="label.png", status=415, words=("not a NIfTI",)),
    "label-without-file": Case("PUT", "/datastore/label", 422, ("no label",), params={"image": FLAIR2},
                               data={"params": "{}"}),
    "label-malformed-params": save(lambda s: label(s), data={"params": "{oops"}, words=("not valid JSON",)),
    # inference
    "infer-unknown-model": Case("POST", "/infer/spleen", 404, ("spleen", "flair_lesion"), params={"image": FLAIR2}),
    "infer-unknown-image": Case("POST", "/infer/flair_lesion", 404, ("sub-99_ses-01_FLAIR", "not in the datastore"),
                                params={"image": "sub-99_ses-01_FLAIR"}),
    "infer-image-traversal": Case("POST", "/infer/flair_lesion", 422, ("not allowed",),
                                  params={"image": f"../studies/{FLAIR2}"}),
    "infer-image-absolute-path": Case("POST", "/infer/flair_lesion", 422, ("no paths",),
                                      params={"image": "/etc/passwd"}),
    "infer-no-image": Case("POST", "/infer/flair_lesion", 422, ("name the image",)),
    "infer-malformed-params": Case("POST", "/infer/flair_lesion", 422, ("not valid JSON",), params={"image": FLAIR2},
                                   data={"params": "{oops"}),
    "infer-params-not-object": Case("POST", "/infer/flair_lesion", 422, ("JSON object",), params={"image": FLAIR2},
                                    data={"params": '"cpu"'}),
    "infer-params-set-image-path": Case("POST", "/infer/flair_lesion", 422, ("may not set 'image'",),
                                        params={"image": FLAIR2}, data={"params": '{"image": "/etc/passwd"}'}),
    "infer-params-save-label-tag-traversal": Case("POST", "/infer/flair_lesion", 422, ("tag", "not allowed"),
                                                  params={"image": FLAIR2},
                                                  data={"params": '{"save_label": true, "label_tag": "../../x"}'}),
    "infer-params-bad-device": Case("POST", "/infer/flair_lesion", 422, ("device", "tpu"), params={"image": FLAIR2},
                                    data={"params": '{"device": "tpu"}'}),
    "infer-params-bad-logging": Case("POST", "/infer/flair_lesion", 422, ("logging",), params={"image": FLAIR2},
                                     data={"params": '{"logging": 5}'}),
    "infer-params-bad-number": Case("POST", "/infer/flair_lesion", 422, ("min_lesion_voxels", "number"),
                                    params={"image": FLAIR2}, data={"params": '{"min_lesion_voxels": "many"}'}),
    "infer-flair-model-on-t1w": Case("POST", "/infer/flair_lesion", 422, ("needs a FLAIR", FLAIR2),
                                     params={"image": T1W2}),
    "infer-unknown-session": Case("POST", "/infer/flair_lesion", 404, ("session", "does not exist"),
                                  params={"session_id": "0f0f0f0f-dead-beef"}),
    "infer-session-id-traversal": Case("POST", "/infer/flair_lesion", 422, ("session id", "not allowed"),
                                       params={"session_id": "../../etc"}),
    "infer-dicom-seg-output": Case("POST", "/infer/flair_lesion", 422, ("dicomweb",),
                                   params={"image": FLAIR2, "output": "dicom_seg"}),
    "infer-unknown-output": Case("POST", "/infer/flair_lesion", 422, ("output",),
                                 params={"image": FLAIR2, "output": "xml"}),
    "infer-upload-garbage": Case("POST", "/infer/flair_lesion", 422, ("not a readable NIfTI",),
                                 files=lambda s: {"file": ("x.nii.gz", b"garbage")}),
    "infer-upload-blank": Case("POST", "/infer/flair_lesion", 422, ("blank",),
                               files=lambda s: {"file": ("x.nii.gz", nifti_bytes(np.zeros((32, 32, 24), np.int16)))}),
    "infer-with-label-input": Case("POST", "/infer/flair_lesion", 422, ("no label input",), params={"image": FLAIR2},
                                   files=lambda s: {"label": ("l.nii.gz", label(s))}),
    "infer-unreadable-image-in-studies": Case("POST", "/infer/flair_lesion", 422, ("cannot read", BROKEN),
                                              params={"image": BROKEN}),
    "infer-missing-companion": Case("POST", "/infer/{multi}", 422, ("{missing}", "beside"),
                                    params={"image": "{primary}"}, needs="multi"),
    "infer-multi-input-on-wrong-sequence": Case("POST", "/infer/{multi}", 422, ("needs a",),
                                                params={"image": T1W2}, needs="multi"),
    "infer-new-lesion-without-baseline": Case("POST", "/infer/new_lesion", 422, ("baseline",),
                                              params={"image": FLAIR2}, needs="new_lesion"),
    "infer-new-lesion-bad-force-flag": Case("POST", "/infer/new_lesion", 422, ("force_baseline",),
                                            params={"image": FLAIR2}, data={"params": '{"force_baseline": "maybe"}'},
                                            needs="new_lesion"),
    "infer-wsi-route": Case("POST", "/infer/wsi/flair_lesion", 404, ("whole-slide",)),
    # datastore routes
    "delete-unknown-image": Case("DELETE", "/datastore/image", 404, ("nope_FLAIR", "nothing was deleted"),
                                 params={"id": "nope_FLAIR"}),
    "delete-unknown-image-deprecated-route": Case("DELETE", "/datastore/", 404, ("not in the datastore",),
                                                  params={"id": "nope_FLAIR"}),
    "delete-label-of-unknown-image": Case("DELETE", "/datastore/label", 404, ("not in the datastore",),
                                          params={"id": "nope_FLAIR", "tag": "final"}),
    "delete-label-unknown-tag": Case("DELETE", "/datastore/label", 404, ("no label tagged", "final"),
                                     params={"id": FLAIR2, "tag": "final"}),
    "delete-label-tag-traversal": Case("DELETE", "/datastore/label", 404, ("no label tagged",),
                                       params={"id": FLAIR1, "tag": "../../labels"}),
    "image-info-unknown": Case("GET", "/datastore/image/info", 404, ("not in the datastore",),
                               params={"image": "nope"}),
    "image-info-update-malformed": Case("PUT", "/datastore/image/info", 422, ("info", "not valid JSON"),
                                        params={"image": FLAIR1}, data={"info": "{oops"}),
    "image-info-update-not-object": Case("PUT", "/datastore/image/info", 422, ("JSON object",),
                                         params={"image": FLAIR1}, data={"info": "[1]"}),
    "image-info-update-unknown": Case("PUT", "/datastore/image/info", 404, ("not in the datastore",),
                                      params={"image": "nope"}, data={"info": "{}"}),
    "label-info-unknown": Case("GET", "/datastore/label/info", 404, ("no label tagged",),
                               params={"label": FLAIR2, "tag": "final"}),
    "label-info-update-unknown": Case("PUT", "/datastore/label/info", 404, ("no label",),
                                      params={"label": FLAIR2, "tag": "final"}, data={"info": "{}"}),
    "updatelabelinfo-malformed": Case("PUT", "/datastore/updatelabelinfo", 422, ("not valid JSON",),
                                      params={"label": FLAIR1, "tag": "final"}, data={"params": "{oops"}),
    "updatelabelinfo-unknown": Case("PUT", "/datastore/updatelabelinfo", 404, ("not in the datastore",),
                                    params={"label": "nope", "tag": "final"}, data={"params": "{}"}),
    "download-unknown-image": Case("GET", "/datastore/image", 404, ("not found",), params={"image": "../etc/passwd"}),
    "download-label-traversal": Case("GET", "/datastore/label", 404, ("not found",),
                                     params={"label": FLAIR1, "tag": "../../"}),
    "datastore-unknown-output": Case("GET", "/datastore/", 422, ("train", "stats"), params={"output": "zzz"}),
    "dataset-limit-negative": Case("GET", "/datastore/dataset", 422, ("limit_cases",), params={"limit_cases": -1}),
    # training, active learning, scoring, batch
    "train-unknown-model": Case("POST", "/train/spleen", 404, ("spleen", "flair_lesion")),
    "train-too-few-labels": Case("POST", "/train/flair_lesion", 422, ("at least 2", "has 1"), json={}),
    "train-malformed-json": Case("POST", "/train/flair_lesion", 422, ("json",), body="{oops"),
    "train-params-not-object": Case("POST", "/train/flair_lesion", 422, ("dictionary",), json=[1, 2]),
    "train-negative-epochs": Case("POST", "/train/flair_lesion", 422, ("max_epochs", "at least 1"),
                                  json={"max_epochs": -1}),
    "train-lr-not-a-number": Case("POST", "/train/flair_lesion", 422, ("lr", "positive number"), json={"lr": "fast"}),
    "train-hard-negative-share-of-one": Case("POST", "/train/flair_lesion", 422, ("bright_negative_share", "up to"),
                                             json={"bright_negative_share": 1}),
    "train-unknown-schedule": Case("POST", "/train/flair_lesion", 422, ("schedule", "turbo"),
                                   json={"schedule": "turbo"}),
    "train-all-none-ready": Case("POST", "/train/", 422, ("no model can be trained", "flair_lesion"), json={}),
    "strategy-unknown": Case("POST", "/activelearning/smartest", 404, ("smartest", "random")),
    "strategy-malformed-json": Case("POST", "/activelearning/random", 422, ("json",), body="{oops"),
    "strategy-bad-candidates": Case("POST", "/activelearning/uncertainty", 422, ("max_candidates",),
                                    json={"max_candidates": "lots"}),
    "scoring-unknown-method": Case("POST", "/scoring/nope", 404, ("scoring method", "nope")),
    "batch-infer-unknown-model": Case("POST", "/batch/infer/nope", 404, ("no model", "nope")),
    "batch-infer-bad-images": Case("POST", "/batch/infer/flair_lesion", 422, ("all", "unlabeled"),
                                   params={"images": "weird"}),
    "batch-infer-tag-traversal": Case("POST", "/batch/infer/flair_lesion", 422, ("tag",),
                                      json={"label_tag": "../../x"}),
    # sessions, model weights, others
    "session-garbage-upload": Case("PUT", "/session/", 422, ("not a readable NIfTI",),
                                   files=lambda s: {"files": ("x.nii.gz", b"garbage")}),
    "session-archive-refused": Case("PUT", "/session/", 422, ("archive",), params={"uncompress": "true"},
                                    files=lambda s: {"files": ("x.zip", b"PK\x03\x04")}),
    "session-unknown": Case("GET", "/session/0f0f0f0f-dead-beef", 404, ("not found",)),
    "session-delete-unknown": Case("DELETE", "/session/0f0f0f0f-dead-beef", 404, ("not found",)),
    "model-upload-garbage": Case("PUT", "/model/flair_lesion", 422, ("not a pytorch checkpoint",),
                                 files=lambda s: {"file": ("w.pt", b"garbage")}),
    "model-upload-wrong-network": Case("PUT", "/model/flair_lesion", 422, ("do not fit",),
                                       files=lambda s: {"file": ("w.pt", checkpoint_bytes({"w": torch.zeros(3)}))}),
    "model-upload-unknown-model": Case("PUT", "/model/nope", 404, ("no model",),
                                       files=lambda s: {"file": ("w.pt", b"x")}),
    "model-delete-defaults": Case("DELETE", "/model/flair_lesion", 404, ("default weights cannot be deleted",)),
    "model-download-unknown": Case("GET", "/model/nope", 404, ("not found",)),
    "dicomweb-proxy-without-dicomweb": Case("GET", "/proxy/dicom/qido/studies", 404, ("local folder", "dicomweb")),
    "dicomweb-proxy-post-without-dicomweb": Case("POST", "/proxy/dicom/stow/studies", 404, ("dicomweb",)),
    "gpu-log-without-gpu-tools": Case("GET", "/logs/gpu", 404, ("nvidia-smi",), needs="no-gpu-tools"),
    "reload-refused": Case("POST", "/reload", 405, ("restart",)),
}


def fill(text: str, s: Suite) -> str:
    if s.multi_input is None:
        return text
    model, inputs = s.multi_input
    return text.format(multi=model, primary=f"{MISSING}_{inputs[0]}", missing=f"{MISSING}_{inputs[1]}")


def detail_of(answer: requests.Response) -> str:
    try:
        detail = answer.json().get("detail", answer.text)
    except ValueError:
        return answer.text
    return detail if isinstance(detail, str) else json.dumps(detail)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request(suite, name):
    case = CASES[name]
    served = set(requests.get(f"{suite.server.url}/info/", timeout=30).json()["models"])
    if case.needs == "multi" and suite.multi_input is None:
        pytest.skip("no multi-input model is served")
    if case.needs == "no-gpu-tools" and shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    if case.needs not in (None, "multi", "no-gpu-tools") and case.needs not in served:
        pytest.skip(f"{case.needs} is not served")
    kwargs: dict = {"timeout": 120}
    if case.params:
        kwargs["params"] = {k: fill(v, suite) if isinstance(v, str) else v for k, v in case.params.items()}
    if case.files:
        kwargs["files"] = case.files(suite)
    if case.data:
        kwargs["data"] = case.data
    if case.json is not None:
        kwargs["json"] = case.json
    if case.body is not None:
        kwargs["data"], kwargs["headers"] = case.body, {"content-type": "application/json"}
    started = time.perf_counter()
    answer = requests.request(case.method, suite.server.url + fill(case.path, suite), **kwargs)
    elapsed = time.perf_counter() - started
    detail = detail_of(answer)
    if answer.status_code == 503 and "has no weights" in detail:
        pytest.skip(f"the model has no weights in this checkout: {detail[:200]}")
    assert answer.status_code == case.status, (answer.status_code, detail[:500])
    if case.method != "HEAD":
        for word in case.words:
            assert fill(word, suite).lower() in detail.lower(), (word, detail[:500])
    assert str(suite.work) not in detail, f"the answer shows a server path: {detail[:300]}"
    assert elapsed < 30, f"{name} took {elapsed:.1f} s"


def test_head_with_an_unknown_checksum_algorithm_is_422(suite):
    answer = requests.head(f"{suite.server.url}/datastore/image", timeout=30,
                           params={"image": FLAIR1, "check_sum": "md99:abc"})
    assert answer.status_code == 422


def test_bad_requests_through_monailabel_client(suite, tmp_path):
    """The same refusals as Slicer's client library sees them: an exception with the status and the reason."""
    client = MONAILabelClient(suite.server.url, tmpdir=str(tmp_path))
    corrupt = tmp_path / "sub-30_ses-01_FLAIR.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b" + os.urandom(300))
    wrong = tmp_path / "wrong.nii.gz"
    wrong.write_bytes(nifti_bytes(np.zeros((12, 12, 12), np.uint8), suite.affine))
    calls = {
        "upload corrupt": (lambda: client.upload_image(str(corrupt), image_id="sub-30_ses-01_FLAIR"), 422,
                           "not a readable NIfTI"),
        "label wrong shape": (lambda: client.save_label(FLAIR2, str(wrong), tag="final"), 422, "shape (12, 12, 12)"),
        "unknown model": (lambda: client.infer("spleen", FLAIR2, {}), 404, "flair_lesion"),
        "unknown image": (lambda: client.infer("flair_lesion", "sub-99_ses-01_FLAIR", {}), 404, "not in the datastore"),
        "unknown strategy": (lambda: client.next_sample("smartest", {}), 404, "uncertainty"),
        "session garbage": (lambda: client.create_session(str(corrupt)), 422, "not a readable NIfTI"),
        "train bad epochs": (lambda: client.train_start("flair_lesion", {"max_epochs": "many"}), 422, "max_epochs"),
    }
    for what, (call, status, words) in calls.items():
        with pytest.raises(MONAILabelClientException) as raised:
            call()
        # some client calls leave status_code unset; every message starts "Status: <code>;"
        assert raised.value.msg.startswith(f"Status: {status};"), (what, raised.value.msg)
        assert words.lower() in str(raised.value.msg).lower(), (what, raised.value.msg)


def test_what_slicer_sends_is_not_refused(suite, tmp_path):
    """The checks must not refuse good requests: Slicer's infer params (result_extension, result_dtype, client_id)."""
    client = MONAILabelClient(suite.server.url, tmpdir=str(tmp_path), client_id="slicer-user")
    path, params = client.infer("flair_lesion", FLAIR2, {"result_extension": ".nrrd", "result_dtype": "uint8"})
    import SimpleITK as sitk

    # answered in the format asked for (NRRD), on the image's grid
    assert path.endswith(".nrrd") and sitk.ReadImage(path).GetSize() == tuple(suite.image_shape)
    assert params["task"] == "flair_lesion"


def test_a_4000_cubed_header_is_refused_without_allocating(suite):
    """Refused from the header: fast, and the server's peak memory does not move."""
    peak = suite.server.peak_memory_mb()
    started = time.perf_counter()
    answer = requests.put(f"{suite.server.url}/datastore/image", params={"image": "sub-40_ses-01_FLAIR"},
                          files={"file": ("x.nii.gz", header_claiming((4000, 4000, 4000), True))}, timeout=60)
    assert answer.status_code == 413 and time.perf_counter() - started < 5
    assert suite.server.peak_memory_mb() < peak + 200


def test_after_the_suite_nothing_changed_and_nothing_leaked(suite):
    """Runs last: every image and label is byte-identical, the index lists the same images and labels, no file
    appeared beside the studies folder, in the server's temp folder or in its session store."""
    s = suite
    assert tree_digest(s.server.studies) == s.before["studies"]
    index = requests.get(f"{s.server.url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]
    assert {k: sorted(v["labels"]) for k, v in index.items()} == {
        k: sorted(v["labels"]) for k, v in s.before["index"].items()
    }
    assert files_under(s.work, skip=("studies", "files")) == s.before["outside"]
    assert files_under(s.tmp) == s.before["tmp"], "a refused request left a file in the server's temp folder"
    assert files_under(s.sessions) == set(), "a refused session upload was stored"
    assert not (s.work / "model").exists() or files_under(s.work / "model") == set()
    log = (s.work / "server.log").read_text()
    assert " 500 Internal Server Error" not in log
