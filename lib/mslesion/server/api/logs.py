"""``GET /logs/gpu``: nvidia-smi's answer, admin only."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from monailabel.endpoints.user.auth import RBAC, User

from ...studies import StudyError
from .common import ADMIN, new_router


def router(msapp) -> APIRouter:
    router = new_router()

    @router.get("/logs/gpu", include_in_schema=False)
    def api_gpu_info(user: User = Depends(RBAC(ADMIN))):
        import shutil
        import subprocess

        from fastapi.responses import Response

        if shutil.which("nvidia-smi") is None:
            raise StudyError(404, "This server has no nvidia-smi (no NVIDIA GPU or driver tools).")
        done = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        return Response(content=done.stdout or done.stderr, media_type="text/plain")

    return router
