"""``PUT``/``DELETE /model/{model}``: admin only, checked weights published atomically, defaults kept."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, Depends, File, UploadFile
from monailabel.endpoints.user.auth import RBAC, User

from ... import weights
from ...studies import StudyError
from ..uploads import received
from .common import ADMIN, new_router, username


def writable_weights(msapp, model: str) -> Path:
    msapp.check_model(model)
    task = msapp._infers[model]
    target = Path(str(task.get_path(validate=False) or ""))
    published = weights.published_weights(msapp.model_dir, model)
    if target.resolve() != published.resolve():
        raise StudyError(422, f"{model}'s weights are not managed by this server; set them with --conf.")
    return published


def router(msapp) -> APIRouter:
    router = new_router()

    @router.put("/model/{model}", summary="Upload weights for a model (msapp: admin, checked, published atomically)")
    def api_update_model(model: str, file: UploadFile = File(None), user: User = Depends(RBAC(ADMIN))):
        target = writable_weights(msapp, model)
        network = getattr(msapp._infers[model], "network", None)
        if network is None:
            raise StudyError(422, f"{model} does not take uploaded weights.")
        with received(file, "weights file", "file", suffix=".pt") as path:
            try:
                state = weights.load_state(path)
            except Exception as error:
                raise StudyError(
                    422, f"The weights file is not a PyTorch checkpoint this server can read ({type(error).__name__})."
                ) from error
        expected = network.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or wrong:
            raise StudyError(
                422,
                f"The weights do not fit {model}'s network: {len(missing)} missing, {len(unexpected)} unexpected, "
                f"{len(wrong)} of the wrong shape (e.g. {(missing + unexpected + wrong)[:3]}).",
            )
        weights.publish(state, msapp.model_dir, model, metadata={"uploaded_by": username(user)})
        stat = target.stat()
        return {"model": model, "modified_time": int(stat.st_mtime), "size": stat.st_size}

    @router.delete("/model/{model}", summary="Remove trained weights (msapp: admin; defaults stay)")
    def api_delete_model(model: str, user: User = Depends(RBAC(ADMIN))):
        target = writable_weights(msapp, model)
        if not target.exists():
            raise StudyError(
                404, f"{model} has no trained weights to remove; the shipped default weights cannot be deleted."
            )
        aside = target.with_name(f"model.pt.{int(os.path.getmtime(target))}.deleted")
        os.replace(target, aside)
        return {"model": model, "moved_to": aside.name}

    return router
