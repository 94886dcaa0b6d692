"""REST endpoints that msapp serves in place of stock MONAI Label's, for answers a client can act on.

Stock MONAI Label 0.8.5 runs ``POST /infer`` on the server's event loop (nothing else is answered while a
model runs), answers 200 to a training request that has no labelled data, 429 to a second training, and
500 to malformed params. These routes are put in front of the stock ones at start-up and delegate to the
stock implementation once a request is known to be servable.
"""

from __future__ import annotations

import json
import logging
from typing import Optional

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, UploadFile
from monailabel.config import settings
from monailabel.endpoints import infer as stock_infer
from monailabel.endpoints import train as stock_train
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.utils.async_tasks.utils import tasks

from .studies import StudyError

logger = logging.getLogger(__name__)


def parse_params(params: str | None) -> dict:
    try:
        value = json.loads(params) if params else {}
    except ValueError as error:
        raise StudyError(422, f"params is not valid JSON ({error}); send a JSON object such as {{}}.") from error
    if not isinstance(value, dict):
        raise StudyError(422, "params must be a JSON object such as {\"device\": \"cpu\"}.")
    return value


def build_router(msapp) -> APIRouter:
    router = APIRouter(prefix=settings.MONAI_LABEL_API_STR)

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
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ):
        parse_params(params)
        msapp.check_model(model)
        return stock_infer.run_inference(background_tasks, model, image, session_id, params, file, label, output)

    @router.post("/train/{model}", summary="Start training a model (msapp: checked before it is queued)")
    def run_training(
        model: str,
        params: Optional[dict] = None,  # noqa: UP045
        run_sync: Optional[bool] = False,  # noqa: UP045
        enqueue: Optional[bool] = False,  # noqa: UP045
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
    ):
        msapp.check_trainable(model)
        active = [t for t in tasks("train") if t.get("status") in ("SUBMITTED", "RUNNING")]
        if active and not enqueue:
            raise StudyError(
                409,
                "A training is already running; wait for it (GET /train/?check_if_running=true) "
                "or stop it (DELETE /train/) before starting another.",
            )
        return stock_train.run_model(model, params, run_sync, enqueue)

    return router


def install(fastapi_app, msapp) -> None:
    """Put msapp's routes in front of the stock ones with the same paths."""
    routes = build_router(msapp).routes
    fastapi_app.router.routes[0:0] = routes
    logger.info("msapp routes installed: %s", ", ".join(sorted({r.path for r in routes})))
