"""REST endpoints that msapp serves in place of stock MONAI Label's, for answers a client can act on.

Seen on stock MONAI Label 0.8.5 (docs/security.md lists them): ``POST /infer`` runs on the server's event loop
(nothing else is answered while a model runs) and takes ``image`` as a server file path when one exists
(``image=/etc/passwd`` is read), and so does an ``image`` key in ``params``; malformed ``params`` or ``info`` JSON,
deleting an unknown image, an unknown checksum algorithm and an upload to an unknown model answer 500; unknown
scoring methods and batch-infer models answer 200 and fail later; ``POST /train/`` queues every trainer without
looking at the data; ``PUT /session/`` keeps any bytes; ``PUT``/``DELETE /model/{model}`` need only the annotator
role and overwrite the weights in place (or rename the shipped defaults away); ``POST /reload`` needs no role; and
every refused upload leaves its temp file behind. These routes are put in front of the stock ones at start-up;
each checks the request first and answers a 4xx that names the problem.

One module per route group, as MONAI Label's own ``monailabel/endpoints/*.py``; each exports ``router(msapp)``.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter

from .. import errors, security
from ..uploads import parse_params
from . import activelearning, batch_infer, datastore, infer, login, logs, model, proxy, reload, scoring, session, train
from .common import running_training

logger = logging.getLogger(__name__)

__all__ = ["build_router", "install", "parse_params", "running_training"]

# in the order their routes were always matched
GROUPS = (infer, train, activelearning, scoring, batch_infer, datastore, session, model, proxy, logs, login, reload)


def build_router(msapp) -> APIRouter:
    """msapp's routes, every group's, in one router."""
    router = APIRouter()
    for group in GROUPS:
        router.routes.extend(group.router(msapp).routes)
    return router


def install(fastapi_app, msapp) -> None:
    """Put msapp's routes in front of the stock ones with the same paths, and answer StudyError on all routes."""
    security.install()
    errors.install(fastapi_app)
    routes = build_router(msapp).routes
    # /reload is registered on the app itself, without the API prefix
    fastapi_app.router.routes[0:0] = routes
    logger.info("msapp routes installed: %s", ", ".join(sorted({f"{sorted(r.methods)[0]} {r.path}" for r in routes})))
