"""``/proxy/dicom/``: the PACS behind OHIF, with the datastore's timeout (mslesion.server.dicom_proxy)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User

from ...studies import StudyError
from .common import USER, new_router, store


def dicomweb_configured() -> bool:
    return settings.MONAI_LABEL_STUDIES.startswith(("http://", "https://"))


def router(msapp) -> APIRouter:
    router = new_router()

    @router.get("/proxy/dicom/{path:path}", include_in_schema=False)
    @router.post("/proxy/dicom/{path:path}", include_in_schema=False)
    async def api_proxy_dicom(request: Request, path: str, user: User = Depends(RBAC(USER))):
        if not dicomweb_configured():
            raise StudyError(
                404, "This server's studies are a local folder; there is no DICOMweb server behind /proxy/dicom/."
            )
        from starlette.concurrency import run_in_threadpool

        from .. import dicom_proxy as proxy

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
            float(getattr(store(msapp), "timeout", 30.0)),
        )

    return router
