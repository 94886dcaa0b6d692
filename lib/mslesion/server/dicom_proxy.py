"""``/proxy/dicom/``: what the OHIF viewer served by msapp reads the PACS through.

Stock MONAI Label's proxy calls the PACS without a timeout (a PACS that stops answering holds the request, and
the browser, for good), drops the request's query string (QIDO filters, paging) and hands network errors back as
500s. This one forwards with the datastore's timeout, keeps the query, and answers 504 (no answer in time) or 503
(cannot connect) naming the PACS.
"""

from __future__ import annotations

import requests
import urllib3
from fastapi.responses import Response

from ..studies import StudyError

# headers that describe one hop, not the content: the answer is re-framed by this server
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-authenticate",
                "proxy-authorization", "te", "trailers", "upgrade", "host", "authorization", "cookie"}


def pacs_path(settings, op: str, path: str) -> str:
    """The PACS path of a proxied request: ``wado``/``qido``/``stow`` map to MONAI Label's configured prefixes
    (metadata asked for through qido goes to wado, as some OHIF versions do)."""
    prefixes = {"wado": settings.MONAI_LABEL_WADO_PREFIX, "qido": settings.MONAI_LABEL_QIDO_PREFIX,
                "stow": settings.MONAI_LABEL_STOW_PREFIX}
    prefix = prefixes.get(op, "")
    if op == "qido" and path.endswith("metadata"):
        prefix = settings.MONAI_LABEL_WADO_PREFIX
    return f"{prefix.strip('/')}/{path}" if prefix else path


def forward(server: str, path: str, method: str, query: str, headers: dict, body: bytes | None, auth,
            timeout: float) -> Response:
    """One request to the PACS and its answer as a response; 504/503 naming the PACS when it does not answer."""
    url = f"{server.rstrip('/')}/{path.lstrip('/')}" + (f"?{query}" if query else "")
    sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}
    try:
        answer = requests.request(method, url, headers=sent, data=body, auth=auth, stream=True,
                                  timeout=(timeout, timeout))
        content = answer.raw.read()
    except (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError) as error:
        raise StudyError(
            504, f"The DICOMweb server {server} did not answer /{path} within {timeout:g} s ({type(error).__name__});"
            " check that it runs, or raise --conf dicomweb_timeout.",
        ) from error
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
        raise StudyError(
            503, f"The DICOMweb server {server} cannot be reached ({type(error).__name__}: {error}); check that it "
            "runs and that --studies names its DICOMweb root.",
        ) from error
    kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS}
    return Response(content=content, status_code=answer.status_code, headers=kept)
