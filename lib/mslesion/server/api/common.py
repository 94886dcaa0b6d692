"""What the route groups share: roles, the datastore, image ids that must exist, one training at a time."""

from __future__ import annotations

from fastapi import APIRouter
from monailabel.config import settings
from monailabel.endpoints.user.auth import User
from monailabel.utils.async_tasks.utils import tasks

from ...studies import StudyError
from ..datastore import check_id

ADMIN, ANNOTATOR, USER = (
    settings.MONAI_LABEL_AUTH_ROLE_ADMIN,
    settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR,
    settings.MONAI_LABEL_AUTH_ROLE_USER,
)


def new_router() -> APIRouter:
    return APIRouter(prefix=settings.MONAI_LABEL_API_STR)


def running_training() -> str | None:
    """The model the server's training queue runs now, if any."""
    for task in tasks("train"):
        if task.get("status") == "RUNNING":
            return (task.get("request") or {}).get("model")
    return None


def username(user: User | None) -> str | None:
    return getattr(user, "username", None)


def store(msapp):
    return msapp.datastore()


def known_image(msapp, image_id: str) -> str:
    check_id(image_id, "Image id")
    if image_id not in set(store(msapp).list_images()):
        raise StudyError(404, f"Image '{image_id}' is not in the datastore; list them with GET /datastore/.")
    return image_id


def training_active() -> list[dict]:
    return [t for t in tasks("train") if t.get("status") in ("SUBMITTED", "RUNNING")]


def refuse_second_training() -> None:
    if training_active():
        raise StudyError(
            409,
            "A training is already running; wait for it (GET /train/?check_if_running=true) "
            "or stop it (DELETE /train/) before starting another.",
        )


def recipe_of(msapp, model: str):
    return getattr(msapp.configs.get(model), "recipe", None)
