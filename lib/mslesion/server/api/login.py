"""``POST /auth/token``: a token from the identity provider (401 on a wrong password)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.security import OAuth2PasswordRequestForm

from .. import security
from .common import new_router


def router(msapp) -> APIRouter:
    router = new_router()

    @router.post("/auth/token", summary="Log in: a token from the identity provider (msapp: 401 on a wrong password)")
    def api_access_token(form: OAuth2PasswordRequestForm = Depends()):
        return security.login(form.username, form.password)

    return router
