"""``POST /batch/infer/{model}``: checked params, a second run a 409."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType
from monailabel.utils.async_tasks.task import AsyncTask

from ...studies import StudyError
from ..datastore import check_tag
from ..uploads import check_infer_params
from .common import ADMIN, new_router


def router(msapp) -> APIRouter:
    router = new_router()

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

    return router
