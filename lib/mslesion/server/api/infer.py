"""``POST /infer/{model}`` in a worker thread, checked before the model runs; no whole-slide routes."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, UploadFile
from monailabel.endpoints import infer as stock_infer
from monailabel.endpoints.user.auth import RBAC, User

from ...studies import StudyError, parse_image_id, resolve_sequences
from .. import sessions as sessions_placement
from ..datastore import read_volume
from ..options import normalise
from ..uploads import check_infer_params, check_session_id, parse_params, received
from .common import USER, known_image, new_router, recipe_of, store


def infer_inputs(msapp, model: str) -> list[str]:
    task = msapp._infers[model]
    try:
        return list(task.info().get("inputs") or [])
    except Exception:  # a task without an info() of its own
        return []


def check_inputs(msapp, model: str, image_id: str) -> None:
    """The sequences a model needs are there (422 naming the missing ones), before any weights are looked at."""
    recipe = recipe_of(msapp, model)
    if recipe is not None:
        resolve_sequences(store(msapp), image_id, model, recipe.inputs[0], recipe.inputs[1:])


def input_paths(msapp, model: str, request: dict) -> list[str]:
    image = request.get("image")
    if isinstance(image, str) and os.path.isfile(image):
        return [image]
    recipe, ref = recipe_of(msapp, model), parse_image_id(str(image))
    ids = [image] + ([ref.companion(s).image_id for s in recipe.inputs[1:]] if recipe and ref else [])
    return [store(msapp).get_image_uri(i) for i in ids if i in set(store(msapp).list_images())]


def explain_failure(msapp, model: str, request: dict, error: Exception) -> None:
    """A task that failed on an image that is unreadable (a file put in the studies folder by hand) is a 422."""
    for path in input_paths(msapp, model, request):
        if isinstance(path, str) and os.path.isfile(path):
            try:
                read_volume(path, f"image {Path(path).name}", kind="image")
            except StudyError as bad:
                raise StudyError(bad.status, f"{model} cannot read its input: {bad.message}") from error


def place_input(msapp, model: str, request: dict, request_params: dict, image: str, session_id: str,
                file: UploadFile | None, cleanup: ExitStack) -> None:
    """What the request runs on, checked: an uploaded file (removed by ``cleanup``), a session's volume placed by its
    name, or a datastore image with its companions."""
    if file is not None:
        inputs = infer_inputs(msapp, model)
        if getattr(getattr(msapp.configs.get(model), "recipe", None), "longitudinal", False):
            raise StudyError(
                422,
                f"{model} compares a follow-up with its baseline; an uploaded file has neither. Upload both "
                "visits to the datastore (PUT /datastore/image) and run it on the follow-up's image id.",
            )
        if len(inputs) > 1:
            raise StudyError(
                422,
                f"{model} needs {', '.join(inputs)} of one session; an uploaded file is one sequence. Upload "
                "the sequences to the datastore (PUT /datastore/image) and run it by image id.",
            )
        path = cleanup.enter_context(received(file, "uploaded image", "file"))
        read_volume(path, "uploaded image", kind="image")
        request["image"] = path
    elif session_id:
        check_session_id(session_id)
        sessions = msapp.sessions()
        session = sessions.get_session(session_id) if sessions else None
        if session is None:
            raise StudyError(
                404, f"Session '{session_id}' does not exist (or expired); create one with PUT /session/."
            )
        recipe = recipe_of(msapp, model)
        placed = sessions_placement.place(
            store(msapp), model, infer_inputs(msapp, model) or [getattr(recipe, "inputs", ("FLAIR",))[0]],
            bool(getattr(recipe, "longitudinal", False)), image or "", session.image, request_params,
        )
        request.update(placed)
        if placed["image"] != session.image:  # a datastore image: its companions are resolved as usual
            check_inputs(msapp, model, placed["image"])
        else:
            request["session"] = session.to_json()
    elif image:
        request["image"] = known_image(msapp, image)
        check_inputs(msapp, model, image)
    else:
        raise StudyError(
            422,
            "Name the image to run on: ?image=<image id> (GET /datastore/ lists them), or upload it as "
            "the form file 'file'.",
        )


def router(msapp) -> APIRouter:
    router = new_router()

    @router.post("/infer/{model}", summary="Run a model on an image (msapp: answered in a worker thread)")
    def run_inference(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = Form("{}"),
        file: UploadFile = File(None),
        label: UploadFile = File(None),
        output: Optional[stock_infer.ResultType] = None,  # noqa: UP045 - FastAPI reads this annotation
        user: User = Depends(RBAC(USER)),
    ):
        if model not in msapp._infers:
            msapp.check_model(model)  # the 404 that lists the models
        task = msapp._infers[model]
        defaults = (task.config() if callable(getattr(task, "config", None)) else {}) or {}
        request_params = normalise(parse_params(params), defaults)  # the GUIs' "" and "3" for defaults and 3
        check_infer_params(request_params, defaults)
        if label is not None:
            raise StudyError(422, f"{model} takes no label input; send only the image.")
        if output == stock_infer.ResultType.dicom_seg:
            raise StudyError(
                422, "output=dicom_seg needs a DICOMweb datastore; this server answers NIfTI (output=image or all)."
            )
        request: dict[str, Any] = {"model": model}
        with ExitStack() as cleanup:
            place_input(msapp, model, request, request_params, image, session_id, file, cleanup)
            msapp.check_model(model)  # 503 when the model has no weights at all
            request.update(msapp.info().get("config", {}).get("infer", {}))
            request.update(request_params)
            try:
                result = msapp.infer(request)
            except StudyError:
                raise
            except Exception as error:
                explain_failure(msapp, model, request, error)
                raise
            if result is None:
                raise StudyError(500, f"{model} answered nothing; see the server log.")
            return stock_infer.send_response(store(msapp), result, output, background_tasks)

    @router.post("/infer/wsi/{model}", summary="Whole-slide inference (msapp: no whole-slide models)")
    @router.post("/infer/wsi_v2/{model}", summary="Whole-slide inference (msapp: no whole-slide models)")
    def run_wsi_inference(model: str, user: User = Depends(RBAC(USER))):
        raise StudyError(
            404, f"This server has no whole-slide (pathology) models; run 3D models with POST /infer/{model}."
        )

    return router
