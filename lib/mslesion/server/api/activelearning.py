"""``POST /activelearning/{strategy}``: known strategies and checked params only."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends
from monailabel.endpoints.user.auth import RBAC, User

from ...studies import StudyError
from ..uploads import check_strategy_params
from .common import USER, new_router, username


def router(msapp) -> APIRouter:
    router = new_router()

    @router.post("/activelearning/{strategy}", summary="Next image to label (msapp: checked params)")
    def api_sample(strategy: str, params: Optional[dict] = None, user: User = Depends(RBAC(USER))):  # noqa: UP045
        from monailabel.endpoints import activelearning as stock_activelearning

        if strategy not in msapp._strategies:
            raise StudyError(
                404, f"There is no strategy '{strategy}'; available: {', '.join(msapp._strategies)}."
            )
        check_strategy_params(params or {})
        return stock_activelearning.sample(strategy, params, username(user))

    return router
