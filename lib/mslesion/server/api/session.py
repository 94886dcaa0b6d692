"""``/session/``: one checked NIfTI volume per session; checked session ids."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, File, UploadFile
from monailabel.endpoints.user.auth import RBAC, User

from ...studies import StudyError
from ..datastore import read_volume
from ..uploads import check_session_id, received, remove_later
from .common import USER, new_router


def session_route(session_id: str) -> str:
    return check_session_id(session_id)


def router(msapp) -> APIRouter:
    router = new_router()

    @router.put("/session/", summary="Create a session with an image (msapp: one checked NIfTI volume)")
    def api_create_session(
        uncompress: bool = False,
        expiry: int = 0,
        files: list[UploadFile] = File(None),
        user: User = Depends(RBAC(USER)),
    ):
        sessions = msapp.sessions()
        if sessions is None:
            raise StudyError(406, "Sessions are turned off on this server (MONAI_LABEL_SESSIONS=false).")
        if uncompress:
            raise StudyError(422, "This server takes one NIfTI volume per session, not an archive (uncompress=false).")
        if not files or len(files) != 1:
            raise StudyError(422, f"Send exactly one .nii.gz volume as the form file 'files' (got {len(files or [])}).")
        if expiry < 0:
            raise StudyError(422, f"expiry must be 0 (server default) or a number of seconds, not {expiry}.")
        with received(files[0], "session image", "files") as path:
            read_volume(path, "session image", kind="image")
            folder = tempfile.mkdtemp(dir=os.path.dirname(path))
            try:
                target = os.path.join(folder, f"image{Path(path).suffix if path.endswith('.nii') else '.nii.gz'}")
                os.replace(path, target)
                session_id, info = sessions.add_session(target, expiry, False)
            finally:
                remove_later(folder)
        return {"session_id": session_id, "session_info": info.to_json()}

    @router.get("/session/{session_id}", include_in_schema=False)
    def api_get_session(session_id: str, update_ts: bool = False, image: bool = False,
                        user: User = Depends(RBAC(USER))):
        from monailabel.endpoints import session as stock_session

        return stock_session.get_session(session_route(session_id), update_ts, image)

    @router.delete("/session/{session_id}", include_in_schema=False)
    def api_remove_session(session_id: str, user: User = Depends(RBAC(USER))):
        from monailabel.endpoints import session as stock_session

        return stock_session.remove_session(session_route(session_id))

    return router
