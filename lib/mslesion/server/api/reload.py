"""``POST /reload``: disabled (405); restart the server instead."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from monailabel.endpoints.user.auth import RBAC, User

from ...studies import StudyError
from .common import ADMIN, new_router


def router(msapp) -> APIRouter:
    router = new_router()

    @router.post("/reload", include_in_schema=False)
    def api_reload(user: User = Depends(RBAC(ADMIN))):
        raise StudyError(405, "Reloading the app in place is disabled; restart the server instead.")

    return router
