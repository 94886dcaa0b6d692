"""REST endpoints that msapp serves in place of stock MONAI Label's, for answers a client can act on.

Seen on stock MONAI Label 0.8.5 (docs/security.md lists them): ``POST /infer`` runs on the server's event loop
(nothing else is answered while a model runs) and takes ``image`` as a server file path when one exists
(``image=/etc/passwd`` is read), and so does an ``image`` key in ``params``; malformed ``params`` or ``info`` JSON,
deleting an unknown image, an unknown checksum algorithm and an upload to an unknown model answer 500; unknown
scoring methods and batch-infer models answer 200 and fail later; ``POST /train/`` queues every trainer without
looking at the data; ``PUT /session/`` keeps any bytes; ``PUT``/``DELETE /model/{model}`` need only the annotator
role and overwrite the weights in place (or rename the shipped defaults away); ``POST /reload`` needs no role; and
every refused upload leaves its temp file behind. These routes are put in front of the stock ones at start-up;
each checks the request first and answers a 4xx that names the problem.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, Request, UploadFile
from fastapi.responses import FileResponse
from fastapi.security import OAuth2PasswordRequestForm
from monailabel.config import settings
from monailabel.endpoints import datastore as stock_datastore
from monailabel.endpoints import infer as stock_infer
from monailabel.endpoints import train as stock_train
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType
from monailabel.utils.async_tasks.task import AsyncTask
from monailabel.utils.async_tasks.utils import tasks
from monailabel.utils.others.generic import get_mime_type

from .. import weights
from ..studies import StudyError, parse_image_id, resolve_sequences
from . import errors, security
from . import sessions as sessions_placement
from .datastore import check_id, check_tag, read_volume
from .options import normalise, normalise_train
from .segments import image_kind, label_in_vocabulary
from .uploads import (
    check_infer_params,
    check_session_id,
    check_strategy_params,
    check_train_params,
    parse_json_object,
    parse_params,
    received,
    remove_later,
)

logger = logging.getLogger(__name__)

ADMIN, ANNOTATOR, USER = (
    settings.MONAI_LABEL_AUTH_ROLE_ADMIN,
    settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR,
    settings.MONAI_LABEL_AUTH_ROLE_USER,
)

__all__ = ["build_router", "install", "parse_params"]


def running_training() -> str | None:
    """The model the server's training queue runs now, if any."""
    for task in tasks("train"):
        if task.get("status") == "RUNNING":
            return (task.get("request") or {}).get("model")
    return None


def _username(user: User | None) -> str | None:
    return getattr(user, "username", None)


def build_router(msapp) -> APIRouter:  # noqa: C901 - one closure per route, kept together
    router = APIRouter(prefix=settings.MONAI_LABEL_API_STR)

    def store():
        return msapp.datastore()

    def known_image(image_id: str) -> str:
        check_id(image_id, "Image id")
        if image_id not in set(store().list_images()):
            raise StudyError(404, f"Image '{image_id}' is not in the datastore; list them with GET /datastore/.")
        return image_id

    def training_active() -> list[dict]:
        return [t for t in tasks("train") if t.get("status") in ("SUBMITTED", "RUNNING")]

    def refuse_second_training() -> None:
        if training_active():
            raise StudyError(
                409,
                "A training is already running; wait for it (GET /train/?check_if_running=true) "
                "or stop it (DELETE /train/) before starting another.",
            )

    # -- infer ----------------------------------------------------------------------------------------------------

    def infer_inputs(model: str) -> list[str]:
        task = msapp._infers[model]
        try:
            return list(task.info().get("inputs") or [])
        except Exception:  # a task without an info() of its own
            return []

    def recipe_of(model: str):
        return getattr(msapp.configs.get(model), "recipe", None)

    def check_inputs(model: str, image_id: str) -> None:
        """The sequences a model needs are there (422 naming the missing ones), before any weights are looked at."""
        recipe = recipe_of(model)
        if recipe is not None:
            resolve_sequences(store(), image_id, model, recipe.inputs[0], recipe.inputs[1:])

    def input_paths(model: str, request: dict) -> list[str]:
        image = request.get("image")
        if isinstance(image, str) and os.path.isfile(image):
            return [image]
        recipe, ref = recipe_of(model), parse_image_id(str(image))
        ids = [image] + ([ref.companion(s).image_id for s in recipe.inputs[1:]] if recipe and ref else [])
        return [store().get_image_uri(i) for i in ids if i in set(store().list_images())]

    def explain_failure(model: str, request: dict, error: Exception) -> None:
        """A task that failed on an image that is unreadable (a file put in the studies folder by hand) is a 422."""
        for path in input_paths(model, request):
            if isinstance(path, str) and os.path.isfile(path):
                try:
                    read_volume(path, f"image {Path(path).name}", kind="image")
                except StudyError as bad:
                    raise StudyError(bad.status, f"{model} cannot read its input: {bad.message}") from error

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
            if file is not None:
                inputs = infer_inputs(model)
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
                recipe = recipe_of(model)
                placed = sessions_placement.place(
                    store(), model, infer_inputs(model) or [getattr(recipe, "inputs", ("FLAIR",))[0]],
                    bool(getattr(recipe, "longitudinal", False)), image or "", session.image, request_params,
                )
                request.update(placed)
                if placed["image"] != session.image:  # a datastore image: its companions are resolved as usual
                    check_inputs(model, placed["image"])
                else:
                    request["session"] = session.to_json()
            elif image:
                request["image"] = known_image(image)
                check_inputs(model, image)
            else:
                raise StudyError(
                    422,
                    "Name the image to run on: ?image=<image id> (GET /datastore/ lists them), or upload it as "
                    "the form file 'file'.",
                )
            msapp.check_model(model)  # 503 when the model has no weights at all
            request.update(msapp.info().get("config", {}).get("infer", {}))
            request.update(request_params)
            try:
                result = msapp.infer(request)
            except StudyError:
                raise
            except Exception as error:
                explain_failure(model, request, error)
                raise
            if result is None:
                raise StudyError(500, f"{model} answered nothing; see the server log.")
            return stock_infer.send_response(store(), result, output, background_tasks)

    @router.post("/infer/wsi/{model}", summary="Whole-slide inference (msapp: no whole-slide models)")
    @router.post("/infer/wsi_v2/{model}", summary="Whole-slide inference (msapp: no whole-slide models)")
    def run_wsi_inference(model: str, user: User = Depends(RBAC(USER))):
        raise StudyError(
            404, f"This server has no whole-slide (pathology) models; run 3D models with POST /infer/{model}."
        )

    # -- train ----------------------------------------------------------------------------------------------------

    def trainer_defaults(model: str) -> dict:
        trainer = msapp._trainers.get(model)
        try:
            return dict(trainer.config()) if trainer is not None else {}
        except Exception:
            return {}

    @router.post("/train/{model}", summary="Start training a model (msapp: checked before it is queued)")
    def run_training(
        model: str,
        params: Optional[dict] = None,  # noqa: UP045
        run_sync: Optional[bool] = False,  # noqa: UP045
        enqueue: Optional[bool] = False,  # noqa: UP045
        user: User = Depends(RBAC(ADMIN)),
    ):
        if model not in msapp._trainers:
            msapp.check_trainable(model)  # the 404 that lists the trainers
        params = normalise_train(params or {}, trainer_defaults(model))  # "" / 0: the schedule's own; "3": 3
        check_train_params(params, trainer_defaults(model))
        msapp.check_trainable(model)
        check_request = getattr(msapp._trainers[model], "check_request", None)
        if check_request:  # e.g. more training processes than visible GPUs: 422 now, not a failed run later
            check_request({**trainer_defaults(model), **(params or {})})
        if not enqueue:
            refuse_second_training()
        return stock_train.run_model(model, params, run_sync, enqueue)

    @router.post("/train/", summary="Start training every model that has enough labels (msapp: checked first)")
    def run_all_training(
        params: Optional[dict] = None,  # noqa: UP045
        run_sync: Optional[bool] = False,  # noqa: UP045
        user: User = Depends(RBAC(ADMIN)),
    ):
        refuse_second_training()
        named = [m for m in (params or {}) if m in msapp._trainers and isinstance(params[m], dict)]
        wanted = named or list(msapp._trainers)  # OHIF sends {model: options} for the models whose options it edited
        ready, skipped, requests = [], {}, {}
        for model in wanted:
            try:
                requests[model] = normalise_train((params or {}).get(model) or {}, trainer_defaults(model))
                check_train_params(requests[model], trainer_defaults(model))
                msapp.check_trainable(model)
                ready.append(model)
            except StudyError as error:
                skipped[model] = error.message
        if skipped:  # a 200 would tell the GUI every model started ("Model update task STARTED")
            reasons = " ".join(f"{m}: {why}" for m, why in skipped.items())
            how = (f"Train the others one by one (POST /train/<model>; in OHIF, change an option of {', '.join(ready)} "
                   "so that only it is sent). " if ready else "")
            if not ready:
                raise StudyError(422, f"No model can be trained now: {reasons} Nothing was queued.")
            raise StudyError(422, f"Not started, because {', '.join(skipped)} cannot be trained now: {reasons} {how}"
                                  "Nothing was queued.")
        result: dict[str, Any] = {}
        for model in ready:
            request = {"model": model, **requests[model]}
            res, detail = AsyncTask.run("train", request=request, params=None, force_sync=run_sync, enqueue=True)
            result[model] = {"result": res, "detail": detail}
        return result

    # -- active learning ------------------------------------------------------------------------------------------

    @router.post("/activelearning/{strategy}", summary="Next image to label (msapp: checked params)")
    def api_sample(strategy: str, params: Optional[dict] = None, user: User = Depends(RBAC(USER))):  # noqa: UP045
        from monailabel.endpoints import activelearning as stock_activelearning

        if strategy not in msapp._strategies:
            raise StudyError(
                404, f"There is no strategy '{strategy}'; available: {', '.join(msapp._strategies)}."
            )
        check_strategy_params(params or {})
        return stock_activelearning.sample(strategy, params, _username(user))

    # -- scoring, batch infer, reload ----------------------------------------------------------------------------

    @router.post("/scoring/{method}", summary="Run a scoring method (msapp: unknown methods are a 404)")
    def run_scoring(
        method: str,
        params: Optional[dict] = None,  # noqa: UP045
        run_sync: Optional[bool] = False,  # noqa: UP045
        user: User = Depends(RBAC(ANNOTATOR)),
    ):
        methods = list(msapp._scoring_methods)
        if method not in methods:
            raise StudyError(404, f"There is no scoring method '{method}'; available: {', '.join(methods) or 'none'}.")
        res, detail = AsyncTask.run("scoring", request={"method": method}, params=params, force_sync=run_sync)
        if res is None:
            raise StudyError(409, f"A scoring task is already running ({detail}); try again when it ends.")
        return res

    @router.post("/batch/infer/{model}", summary="Run a model on many images (msapp: checked first)")
    def run_batch_inference(
        model: str,
        images: Optional[BatchInferImageType] = BatchInferImageType.IMAGES_ALL,  # noqa: UP045
        params: Optional[dict] = None,  # noqa: UP045
        run_sync: Optional[bool] = False,  # noqa: UP045
        user: User = Depends(RBAC(ADMIN)),
    ):
        msapp.check_model(model)
        params = dict(params or {})
        check_infer_params(params, {})
        if "label_tag" in params:
            check_tag(params["label_tag"])
        params.setdefault("device", "cuda")
        params.setdefault("label_tag", DefaultLabelTag.ORIGINAL)
        params.setdefault("save_label", True)
        res, detail = AsyncTask.run("batch_infer", request={"model": model, "images": images}, params=params,
                                    force_sync=run_sync)
        if res is None:
            raise StudyError(409, f"A batch inference is already running ({detail}); try again when it ends.")
        return res

    # -- datastore ------------------------------------------------------------------------------------------------

    def add_image(image: str | None, params: str, file: UploadFile | None, user: User | None) -> dict:
        info = parse_json_object(params, "params")
        if file is None:
            raise StudyError(422, "The request has no image: send it as the multipart form file field 'file'.")
        name = os.path.basename(file.filename or "")
        image_id = image or name.removesuffix(".gz").removesuffix(".nii")
        check_id(image_id, "Image id")
        if user is not None:
            info["user"] = _username(user)
        with received(file, "uploaded image", "file") as path:
            return {"image": store().add_image(image_id, path, info)}

    @router.put("/datastore/image", summary="Upload a new image (msapp: checked, written atomically)")
    @router.put("/datastore/", include_in_schema=False)
    def api_add_image(
        image: Optional[str] = None,  # noqa: UP045
        params: str = Form("{}"),
        file: UploadFile = File(None),
        user: User = Depends(RBAC(ANNOTATOR)),
    ):
        return add_image(image, params, file, user)

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
        known_image(image)
        if user is not None:
            info["user"] = _username(user)
        # OHIF's MONAI Label panel sends raw voxels as 'label.bin': taken where the datastore can place them
        raw = (".bin",) if callable(getattr(store(), "bin_to_nifti", None)) else ()
        with received(label, "label", "label", also=raw) as path:
            kind = image_kind(store(), image) if path.endswith((".nii", ".nii.gz")) else None
            with label_in_vocabulary(path, kind, info) as stored:  # Slicer's label_info names -> stored values
                label_id = store().save_label(image, stored, tag, info)
        answer = msapp.on_save_label(image, label_id) or {}
        answer.update({"image": image, "label": label_id})
        return answer

    @router.put("/datastore/image/info", summary="Update an image's info (msapp: checked)")
    def api_put_image_info(image: str, info: str = Form("{}"), user: User = Depends(RBAC(ANNOTATOR))):
        values = parse_json_object(info, "info", '{"comment": "motion artefact"}')
        if user is not None:
            values["user"] = _username(user)
        store().update_image_info(known_image(image), values)
        return {}

    def update_label_info(label: str, tag: str, text: str, field: str, user: User | None) -> dict:
        values = parse_json_object(text, field, '{"comment": "reviewed"}')
        check_tag(tag)
        known_image(label)
        if user is not None:
            values["user"] = _username(user)
        store().update_label_info(label, tag, values)
        return {}

    @router.put("/datastore/label/info", summary="Update a label's info (msapp: checked)")
    def api_put_label_info(label: str, tag: str, info: str = Form("{}"), user: User = Depends(RBAC(ANNOTATOR))):
        return update_label_info(label, tag, info, "info", user)

    @router.put("/datastore/updatelabelinfo", include_in_schema=False)
    def api_update_label_info(label: str, tag: str, params: str = Form("{}"), user: User = Depends(RBAC(ANNOTATOR))):
        return update_label_info(label, tag, params, "params", user)

    @router.get("/datastore/image/info", summary="An image's info (msapp: 404 for an unknown image)")
    def api_get_image_info(image: str, user: User = Depends(RBAC(USER))):
        return store().get_image_info(known_image(image))

    @router.get("/datastore/label/info", summary="A label's info (msapp: 404 for an unknown label)")
    def api_get_label_info(label: str, tag: str, user: User = Depends(RBAC(USER))):
        check_tag(tag)
        known_image(label)
        if not store().get_label_uri(label, tag):
            raise StudyError(404, f"Image '{label}' has no label tagged '{tag}'.")
        return store().get_label_info(label, tag)

    @router.head("/datastore/image", summary="Does an image exist (msapp: checked checksum algorithm)")
    def api_check_image(image: str, check_sum: Optional[str] = None, user: User = Depends(RBAC(USER))):  # noqa: UP045
        if check_sum:
            fields = check_sum.split(":")
            algo = "SHA256" if len(fields) == 1 else fields[0]
            if len(fields) > 2 or algo.lower() not in hashlib.algorithms_available:
                raise StudyError(
                    422, f"check_sum '{check_sum[:80]}' is not <algorithm>:<hex digest>, e.g. SHA256:ab12.."
                )
        known_image(image)
        return stock_datastore.download_image(image, check_only=True, check_sum=check_sum)

    @router.get("/datastore/dataset", summary="Download the labelled studies as a ZIP (msapp: temp file removed)")
    def api_download_dataset(
        background_tasks: BackgroundTasks,
        limit_cases: Optional[int] = None,  # noqa: UP045
        user: User = Depends(RBAC(ANNOTATOR)),
    ):
        if limit_cases is not None and limit_cases < 1:
            raise StudyError(422, f"limit_cases must be at least 1, not {limit_cases}.")
        if not store().datalist():
            raise StudyError(404, "No image has a final label yet; there is no dataset to download.")
        path = store().get_dataset_archive(limit_cases)
        background_tasks.add_task(remove_later, path)
        return FileResponse(path, media_type=get_mime_type(path), filename="dataset.zip")

    # -- sessions -------------------------------------------------------------------------------------------------

    @router.put("/session/", summary="Create a session with an image (msapp: one checked NIfTI volume)")
    def api_create_session(
        uncompress: bool = False,
        expiry: int = 0,
        files: list[UploadFile] = File(None),
        user: User = Depends(RBAC(USER)),
    ):
        sessions = msapp.sessions()
        if sessions is None:
            raise StudyError(406, "Sessions are turned off on this server (MONAI_LABEL_SESSIONS=false).")
        if uncompress:
            raise StudyError(422, "This server takes one NIfTI volume per session, not an archive (uncompress=false).")
        if not files or len(files) != 1:
            raise StudyError(422, f"Send exactly one .nii.gz volume as the form file 'files' (got {len(files or [])}).")
        if expiry < 0:
            raise StudyError(422, f"expiry must be 0 (server default) or a number of seconds, not {expiry}.")
        with received(files[0], "session image", "files") as path:
            read_volume(path, "session image", kind="image")
            folder = tempfile.mkdtemp(dir=os.path.dirname(path))
            try:
                target = os.path.join(folder, f"image{Path(path).suffix if path.endswith('.nii') else '.nii.gz'}")
                os.replace(path, target)
                session_id, info = sessions.add_session(target, expiry, False)
            finally:
                remove_later(folder)
        return {"session_id": session_id, "session_info": info.to_json()}

    def session_route(session_id: str) -> str:
        return check_session_id(session_id)

    @router.get("/session/{session_id}", include_in_schema=False)
    def api_get_session(session_id: str, update_ts: bool = False, image: bool = False,
                        user: User = Depends(RBAC(USER))):
        from monailabel.endpoints import session as stock_session

        return stock_session.get_session(session_route(session_id), update_ts, image)

    @router.delete("/session/{session_id}", include_in_schema=False)
    def api_remove_session(session_id: str, user: User = Depends(RBAC(USER))):
        from monailabel.endpoints import session as stock_session

        return stock_session.remove_session(session_route(session_id))

    # -- model weights --------------------------------------------------------------------------------------------

    def writable_weights(model: str) -> Path:
        msapp.check_model(model)
        task = msapp._infers[model]
        target = Path(str(task.get_path(validate=False) or ""))
        published = weights.published_weights(msapp.model_dir, model)
        if target.resolve() != published.resolve():
            raise StudyError(422, f"{model}'s weights are not managed by this server; set them with --conf.")
        return published

    @router.put("/model/{model}", summary="Upload weights for a model (msapp: admin, checked, published atomically)")
    def api_update_model(model: str, file: UploadFile = File(None), user: User = Depends(RBAC(ADMIN))):
        target = writable_weights(model)
        network = getattr(msapp._infers[model], "network", None)
        if network is None:
            raise StudyError(422, f"{model} does not take uploaded weights.")
        with received(file, "weights file", "file", suffix=".pt") as path:
            try:
                state = weights.load_state(path)
            except Exception as error:
                raise StudyError(
                    422, f"The weights file is not a PyTorch checkpoint this server can read ({type(error).__name__})."
                ) from error
        expected = network.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or wrong:
            raise StudyError(
                422,
                f"The weights do not fit {model}'s network: {len(missing)} missing, {len(unexpected)} unexpected, "
                f"{len(wrong)} of the wrong shape (e.g. {(missing + unexpected + wrong)[:3]}).",
            )
        weights.publish(state, msapp.model_dir, model, metadata={"uploaded_by": _username(user)})
        stat = target.stat()
        return {"model": model, "modified_time": int(stat.st_mtime), "size": stat.st_size}

    @router.delete("/model/{model}", summary="Remove trained weights (msapp: admin; defaults stay)")
    def api_delete_model(model: str, user: User = Depends(RBAC(ADMIN))):
        target = writable_weights(model)
        if not target.exists():
            raise StudyError(
                404, f"{model} has no trained weights to remove; the shipped default weights cannot be deleted."
            )
        aside = target.with_name(f"model.pt.{int(os.path.getmtime(target))}.deleted")
        os.replace(target, aside)
        return {"model": model, "moved_to": aside.name}

    # -- DICOMweb proxy, GPU log -----------------------------------------------------------------------------------

    def dicomweb_configured() -> bool:
        return settings.MONAI_LABEL_STUDIES.startswith(("http://", "https://"))

    @router.get("/proxy/dicom/{path:path}", include_in_schema=False)
    @router.post("/proxy/dicom/{path:path}", include_in_schema=False)
    async def api_proxy_dicom(request: Request, path: str, user: User = Depends(RBAC(USER))):
        if not dicomweb_configured():
            raise StudyError(
                404, "This server's studies are a local folder; there is no DICOMweb server behind /proxy/dicom/."
            )
        from starlette.concurrency import run_in_threadpool

        from . import dicom_proxy as proxy

        op, _, rest = path.partition("/")
        if op not in ("wado", "qido", "stow"):
            op, rest = "", path
        if "googleapis.com" in settings.MONAI_LABEL_STUDIES:  # Google's token refresh: stock MONAI Label's proxy
            from monailabel.endpoints import proxy as stock_proxy

            return await stock_proxy.proxy_dicom(request, op, rest)
        user_name, password = settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
        body = await request.body() if request.method == "POST" else None
        return await run_in_threadpool(
            proxy.forward, settings.MONAI_LABEL_STUDIES, proxy.pacs_path(settings, op, rest), request.method,
            request.url.query, dict(request.headers), body, (user_name, password) if user_name and password else None,
            float(getattr(store(), "timeout", 30.0)),
        )

    @router.get("/logs/gpu", include_in_schema=False)
    def api_gpu_info(user: User = Depends(RBAC(ADMIN))):
        import shutil
        import subprocess

        from fastapi.responses import Response

        if shutil.which("nvidia-smi") is None:
            raise StudyError(404, "This server has no nvidia-smi (no NVIDIA GPU or driver tools).")
        done = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        return Response(content=done.stdout or done.stderr, media_type="text/plain")

    @router.post("/auth/token", summary="Log in: a token from the identity provider (msapp: 401 on a wrong password)")
    def api_access_token(form: OAuth2PasswordRequestForm = Depends()):
        return security.login(form.username, form.password)

    @router.post("/reload", include_in_schema=False)
    def api_reload(user: User = Depends(RBAC(ADMIN))):
        raise StudyError(405, "Reloading the app in place is disabled; restart the server instead.")

    return router


def install(fastapi_app, msapp) -> None:
    """Put msapp's routes in front of the stock ones with the same paths, and answer StudyError on all routes."""
    security.install()
    errors.install(fastapi_app)
    routes = build_router(msapp).routes
    # /reload is registered on the app itself, without the API prefix
    fastapi_app.router.routes[0:0] = routes
    logger.info("msapp routes installed: %s", ", ".join(sorted({f"{sorted(r.methods)[0]} {r.path}" for r in routes})))
