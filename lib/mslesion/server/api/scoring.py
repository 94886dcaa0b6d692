"""``POST /scoring/{method}``: unknown methods are a 404, a second run a 409."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.utils.async_tasks.task import AsyncTask

from ...studies import StudyError
from .common import ANNOTATOR, new_router


def router(msapp) -> APIRouter:
    router = new_router()

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

    return router
