"""``/datastore/``: uploads and labels checked and written atomically, info updates checked, 404s for
unknown images and labels."""

from __future__ import annotations

import hashlib
import os
from typing import Optional

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, UploadFile
from fastapi.responses import FileResponse
from monailabel.endpoints import datastore as stock_datastore
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.utils.others.generic import get_mime_type

from ...studies import StudyError
from ..datastore import check_id, check_tag
from ..segments import image_kind, label_in_vocabulary
from ..uploads import parse_json_object, received, remove_later
from .common import ANNOTATOR, USER, known_image, new_router, store, username


def add_image(msapp, image: str | None, params: str, file: UploadFile | None, user: User | None) -> dict:
    info = parse_json_object(params, "params")
    if file is None:
        raise StudyError(422, "The request has no image: send it as the multipart form file field 'file'.")
    name = os.path.basename(file.filename or "")
    image_id = image or name.removesuffix(".gz").removesuffix(".nii")
    check_id(image_id, "Image id")
    if user is not None:
        info["user"] = username(user)
    with received(file, "uploaded image", "file") as path:
        return {"image": store(msapp).add_image(image_id, path, info)}


def update_label_info(msapp, label: str, tag: str, text: str, field: str, user: User | None) -> dict:
    values = parse_json_object(text, field, '{"comment": "reviewed"}')
    check_tag(tag)
    known_image(msapp, label)
    if user is not None:
        values["user"] = username(user)
    store(msapp).update_label_info(label, tag, values)
    return {}


def _upload_routes(router: APIRouter, msapp) -> None:
    """Images and labels in."""

    @router.put("/datastore/image", summary="Upload a new image (msapp: checked, written atomically)")
    @router.put("/datastore/", include_in_schema=False)
    def api_add_image(
        image: Optional[str] = None,  # noqa: UP045
        params: str = Form("{}"),
        file: UploadFile = File(None),
        user: User = Depends(RBAC(ANNOTATOR)),
    ):
        return add_image(msapp, image, params, file, user)

    @router.put("/datastore/label", summary="Save a label (msapp: checked against its image, written atomically)")
    def api_save_label(
        image: str,
        params: str = Form("{}"),
        tag: str = DefaultLabelTag.FINAL.value,
        label: UploadFile = File(None),
        user: User = Depends(RBAC(ANNOTATOR)),
    ):
        info = parse_json_object(params, "params")
        tag = tag or DefaultLabelTag.FINAL.value
        check_tag(tag)
        known_image(msapp, image)
        if user is not None:
            info["user"] = username(user)
        # OHIF's MONAI Label panel sends raw voxels as 'label.bin': taken where the datastore can place them
        raw = (".bin",) if callable(getattr(store(msapp), "bin_to_nifti", None)) else ()
        with received(label, "label", "label", also=raw) as path:
            kind = image_kind(store(msapp), image) if path.endswith((".nii", ".nii.gz")) else None
            with label_in_vocabulary(path, kind, info) as stored:  # Slicer's label_info names -> stored values
                label_id = store(msapp).save_label(image, stored, tag, info)
        answer = msapp.on_save_label(image, label_id) or {}
        answer.update({"image": image, "label": label_id})
        return answer


def _info_routes(router: APIRouter, msapp) -> None:
    """Image and label info, read and updated."""

    @router.put("/datastore/image/info", summary="Update an image's info (msapp: checked)")
    def api_put_image_info(image: str, info: str = Form("{}"), user: User = Depends(RBAC(ANNOTATOR))):
        values = parse_json_object(info, "info", '{"comment": "motion artefact"}')
        if user is not None:
            values["user"] = username(user)
        store(msapp).update_image_info(known_image(msapp, image), values)
        return {}

    @router.put("/datastore/label/info", summary="Update a label's info (msapp: checked)")
    def api_put_label_info(label: str, tag: str, info: str = Form("{}"), user: User = Depends(RBAC(ANNOTATOR))):
        return update_label_info(msapp, label, tag, info, "info", user)

    @router.put("/datastore/updatelabelinfo", include_in_schema=False)
    def api_update_label_info(label: str, tag: str, params: str = Form("{}"), user: User = Depends(RBAC(ANNOTATOR))):
        return update_label_info(msapp, label, tag, params, "params", user)

    @router.get("/datastore/image/info", summary="An image's info (msapp: 404 for an unknown image)")
    def api_get_image_info(image: str, user: User = Depends(RBAC(USER))):
        return store(msapp).get_image_info(known_image(msapp, image))

    @router.get("/datastore/label/info", summary="A label's info (msapp: 404 for an unknown label)")
    def api_get_label_info(label: str, tag: str, user: User = Depends(RBAC(USER))):
        check_tag(tag)
        known_image(msapp, label)
        if not store(msapp).get_label_uri(label, tag):
            raise StudyError(404, f"Image '{label}' has no label tagged '{tag}'.")
        return store(msapp).get_label_info(label, tag)


def _file_routes(router: APIRouter, msapp) -> None:
    """Files out: an image's checksum, the dataset."""

    @router.head("/datastore/image", summary="Does an image exist (msapp: checked checksum algorithm)")
    def api_check_image(image: str, check_sum: Optional[str] = None, user: User = Depends(RBAC(USER))):  # noqa: UP045
        if check_sum:
            fields = check_sum.split(":")
            algo = "SHA256" if len(fields) == 1 else fields[0]
            if len(fields) > 2 or algo.lower() not in hashlib.algorithms_available:
                raise StudyError(
                    422, f"check_sum '{check_sum[:80]}' is not <algorithm>:<hex digest>, e.g. SHA256:ab12.."
                )
        known_image(msapp, image)
        return stock_datastore.download_image(image, check_only=True, check_sum=check_sum)

    @router.get("/datastore/dataset", summary="Download the labelled studies as a ZIP (msapp: temp file removed)")
    def api_download_dataset(
        background_tasks: BackgroundTasks,
        limit_cases: Optional[int] = None,  # noqa: UP045
        user: User = Depends(RBAC(ANNOTATOR)),
    ):
        if limit_cases is not None and limit_cases < 1:
            raise StudyError(422, f"limit_cases must be at least 1, not {limit_cases}.")
        if not store(msapp).datalist():
            raise StudyError(404, "No image has a final label yet; there is no dataset to download.")
        path = store(msapp).get_dataset_archive(limit_cases)
        background_tasks.add_task(remove_later, path)
        return FileResponse(path, media_type=get_mime_type(path), filename="dataset.zip")


def router(msapp) -> APIRouter:
    router = new_router()
    _upload_routes(router, msapp)
    _info_routes(router, msapp)
    _file_routes(router, msapp)
    return router
