"""``POST /train/{model}`` and ``POST /train/``: checked (trainer, labels, options, one at a time) before
anything is queued."""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Depends
from monailabel.endpoints import train as stock_train
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.utils.async_tasks.task import AsyncTask

from ...studies import StudyError
from ..options import normalise_train
from ..uploads import check_train_params
from .common import ADMIN, new_router, refuse_second_training


def trainer_defaults(msapp, model: str) -> dict:
    trainer = msapp._trainers.get(model)
    try:
        return dict(trainer.config()) if trainer is not None else {}
    except Exception:
        return {}


def router(msapp) -> APIRouter:
    router = new_router()

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
        params = normalise_train(params or {}, trainer_defaults(msapp, model))  # "" / 0: the schedule's own; "3": 3
        check_train_params(params, trainer_defaults(msapp, model))
        msapp.check_trainable(model)
        check_request = getattr(msapp._trainers[model], "check_request", None)
        if check_request:  # e.g. more training processes than visible GPUs: 422 now, not a failed run later
            check_request({**trainer_defaults(msapp, model), **(params or {})})
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
                requests[model] = normalise_train((params or {}).get(model) or {}, trainer_defaults(msapp, model))
                check_train_params(requests[model], trainer_defaults(msapp, model))
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

    return router
