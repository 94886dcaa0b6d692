"""The one place where a domain error becomes an HTTP answer.

``mslesion.studies.StudyError`` is raised wherever a request cannot be served (resolving companions, checking an
upload, a task's own checks); here it is answered as FastAPI answers an ``HTTPException``: its status and
``{"detail": message}``, whichever route raised it, msapp's or MONAI Label's stock ones.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..studies import StudyError


async def study_error_response(request: Request, error: StudyError) -> JSONResponse:
    return JSONResponse({"detail": error.message}, status_code=error.status)


def install(fastapi_app: FastAPI) -> None:
    """Answer StudyError on every route of the app.

    Starlette copies its exception handlers into the middleware stack it builds on its first call, which is the
    lifespan startup msapp is installed from; the built stack is dropped so that the first request builds it again
    with this handler (no request is served before startup ends)."""
    fastapi_app.add_exception_handler(StudyError, study_error_response)
    fastapi_app.middleware_stack = None
