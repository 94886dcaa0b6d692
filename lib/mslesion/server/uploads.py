"""Receiving request bodies safely: JSON params, uploaded files in a server-private folder, size caps.

Stock MONAI Label writes each upload to ``tempfile.NamedTemporaryFile(...).name`` in the system temp folder and
relies on a FastAPI background task to delete it. A background task runs only when the endpoint returns: every
refused upload (422, 404...) left its file in /tmp for good. Here uploads go to a folder private to the server
process and are deleted in a ``finally``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import UploadFile

from ..studies import StudyError
from .datastore import nifti_extension

MAX_UPLOAD_BYTES = int(float(os.environ.get("MSAPP_MAX_UPLOAD_MB", 4096)) * 2**20)
_UPLOAD_DIR: str | None = None
_SESSION_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def upload_dir() -> str:
    global _UPLOAD_DIR
    if _UPLOAD_DIR is None or not os.path.isdir(_UPLOAD_DIR):
        _UPLOAD_DIR = tempfile.mkdtemp(prefix="msapp-uploads-")
    return _UPLOAD_DIR


def parse_json_object(text: str | None, field: str = "params", example: str = '{"device": "cpu"}') -> dict:
    """A form field that must hold a JSON object, or a 422 that says so."""
    try:
        value = json.loads(text) if text else {}
    except ValueError as error:
        raise StudyError(422, f"{field} is not valid JSON ({error}); send a JSON object such as {{}}.") from error
    if not isinstance(value, dict):
        raise StudyError(422, f"{field} must be a JSON object such as {example}, not {type(value).__name__}.")
    return value


def parse_params(params: str | None) -> dict:
    return parse_json_object(params, "params")


@contextmanager
def received(upload: UploadFile | None, what: str, field: str, suffix: str | None = None,
             also: tuple[str, ...] = ()) -> Iterator[str]:
    """The upload written to a private temp file named with its extension (a NIfTI one unless ``suffix`` is
    given, or one of ``also`` when its name ends so); removed when the block ends."""
    if upload is None or isinstance(upload, str):
        raise StudyError(422, f"The request has no {what}: send it as the multipart form file field '{field}'.")
    name = (upload.filename or "").lower()
    ext = suffix or next((e for e in also if name.endswith(e)), None) or nifti_extension(upload.filename or "")
    fd, path = tempfile.mkstemp(dir=upload_dir(), suffix=ext)
    try:
        written = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := upload.file.read(1 << 20):
                written += len(chunk)
                if written > MAX_UPLOAD_BYTES:
                    raise StudyError(
                        413, f"The {what} is larger than {MAX_UPLOAD_BYTES // 2**20} MB, the most this server accepts."
                    )
                out.write(chunk)
        if written == 0:
            raise StudyError(422, f"The {what} is empty (0 bytes); upload the .nii.gz file itself.")
        yield path
    finally:
        if os.path.exists(path):
            os.unlink(path)


def remove_later(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.unlink(path)


def check_session_id(session_id: str) -> str:
    if not _SESSION_ID.match(session_id or ""):
        raise StudyError(422, f"Session id '{session_id[:80]}' is not allowed: it is the id PUT /session/ answered.")
    return session_id


_DEVICE = re.compile(r"^(cpu|cuda(:\d{1,2})?)$")
_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
FLAG_KEYS = ("force_baseline", "include_all_lesions", "skip_writer", "save_label")
# Slicer and OHIF send result_extension/result_dtype/result_compress with every infer: the answer is uint8 in the
# asked format (mslesion.answers); an unknown result_extension is refused before the model runs.
RESERVED_INFER_KEYS = ("image", "model", "label", "session", "sequences", "file")


def check_device(value: Any) -> None:
    import torch

    devices = value if isinstance(value, list) else [value]
    for device in devices:
        if not isinstance(device, str) or not _DEVICE.match(device):
            raise StudyError(422, f"params device {value!r} is not a device: use \"cpu\" or \"cuda\" (or \"cuda:N\").")
        if device.startswith("cuda:") and torch.cuda.is_available() and int(device[5:]) >= torch.cuda.device_count():
            raise StudyError(
                422, f"params device {device} does not exist; this server has {torch.cuda.device_count()} GPU(s)."
            )


def check_value(key: str, value: Any, default: Any, where: str) -> None:
    """A param whose default is a number or a flag must be one too (an infer or train request's values)."""
    if isinstance(default, bool):
        if not isinstance(value, bool) and str(value).lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise StudyError(422, f"{where} {key} must be true or false, not {value!r}.")
    elif isinstance(default, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise StudyError(422, f"{where} {key} must be a number, not {value!r}.")
        if isinstance(default, int) and value != int(value):
            raise StudyError(422, f"{where} {key} must be a whole number, not {value!r}.")
        if value < 0:
            raise StudyError(422, f"{where} {key} must not be negative ({value!r}).")


def check_infer_params(params: dict, defaults: dict) -> None:
    for key in RESERVED_INFER_KEYS:
        if key in params:
            raise StudyError(
                422,
                f"params may not set '{key}': name the image with ?image=<id> (or upload it as 'file'); "
                "the server finds its companions itself.",
            )
    if "device" in params:
        check_device(params["device"])
    if "result_extension" in params:
        from ..answers import answer_extension

        answer_extension(params["result_extension"])
    if "logging" in params and str(params["logging"]).upper() not in _LEVELS:
        raise StudyError(422, f"params logging {params['logging']!r} is not a level: one of {sorted(_LEVELS)}.")
    for key in FLAG_KEYS:
        if key in params:
            check_value(key, params[key], False, "params")
    if "label_tag" in params:
        from .datastore import check_tag

        check_tag(params["label_tag"])
    if "timeout" in params:
        check_value("timeout", params["timeout"], 1.0, "params")
    if "baseline" in params and params["baseline"] is not None:
        from .datastore import check_id

        check_id(params["baseline"], "params baseline (an image id)")
    for key, value in params.items():
        if key in defaults and defaults[key] is not None and key not in ("device", "logging"):
            check_value(key, value, defaults[key], "params")


def check_strategy_params(params: dict) -> None:
    """Active-learning params: the counts the strategies read must be whole numbers."""
    if "device" in params:
        check_device(params["device"])
    for key in ("max_candidates", "max_images"):
        if key in params and params[key] is not None:
            check_value(key, params[key], 0, "params")


POSITIVE_INT_TRAIN_KEYS = ("max_epochs", "patches_per_study", "epochs", "batch_size")
POSITIVE_REAL_TRAIN_KEYS = ("lr",)


def check_train_params(params: dict, defaults: dict) -> None:
    if "device" in params:
        check_device(params["device"])
    for key in POSITIVE_INT_TRAIN_KEYS:
        value = params.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise StudyError(422, f"Training param {key} must be a whole number of at least 1, not {value!r}.")
    for key in POSITIVE_REAL_TRAIN_KEYS:
        value = params.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0
        ):
            raise StudyError(422, f"Training param {key} must be a positive number, not {value!r}.")
    share = params.get("bright_negative_share")
    if share is not None and (isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share < 1):
        raise StudyError(422, "Training param bright_negative_share is the share of lesion-free crops centred on "
                              f"bright tissue: a number from 0 up to (not including) 1, not {share!r}.")
    schedule = params.get("schedule")
    if "schedule" in defaults and schedule is not None and schedule not in ("auto", "paper", "cpu"):
        raise StudyError(422, f"Training param schedule must be \"auto\", \"paper\" or \"cpu\", not {schedule!r}.")
    for key, value in params.items():
        skip = ("device", "schedule", *POSITIVE_REAL_TRAIN_KEYS)
        if key in defaults and defaults[key] is not None and key not in skip:
            check_value(key, value, defaults[key], "Training param")
