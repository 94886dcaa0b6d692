"""Authentication for msapp: MONAI Label's role checks (RBAC) with a token check that works.

MONAI Label 0.8.5 checks roles with ``RBAC(role)`` dependencies on every endpoint, against the roles in the
caller's OpenID Connect access token (``MONAI_LABEL_AUTH_*`` settings; docs/security.md). Its token check is
broken on this stack: ``jwt.decode`` is called without ``algorithms``, which PyJWT 2 refuses, so every token is
answered 401. It also caches the realm's public key forever, answers 500 when the identity provider is
unreachable or a login fails, and does not look at the token's issuer. ``install()`` replaces that check with
``from_token`` below, which

- accepts only asymmetric signatures (RS/PS/ES; never ``none`` or HMAC, so the public key cannot be used as a
  shared secret), with the key published at the realm URI (Keycloak's ``public_key``) and re-read after
  ``MSAPP_AUTH_KEY_TTL`` seconds or when a signature does not verify (key rotation);
- requires ``exp`` and checks it (30 s leeway), checks ``iss`` against ``MSAPP_AUTH_ISSUER`` (default: the realm
  URI, which is what Keycloak puts in its tokens; set it to the public URL when the server reaches the identity
  provider by another address; set it to ``-`` to skip), and ``aud`` when ``MSAPP_AUTH_AUDIENCE`` is set;
- answers 401 for any token that fails, 503 when the identity provider cannot be reached.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import jwt
import requests
from fastapi import HTTPException, status
from monailabel.config import settings

logger = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
KEY_TTL_S = float(os.environ.get("MSAPP_AUTH_KEY_TTL", 600))
LEEWAY_S = 30

_lock = threading.Lock()
_keys: dict[str, tuple[float, str]] = {}


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail=detail,
                         headers={"WWW-Authenticate": "Bearer"})


def _unreachable() -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        detail="The identity provider cannot be reached; try again later.",
    )


def realm_public_key(realm_uri: str, refresh: bool = False) -> str:
    """The realm's signing key in PEM, as Keycloak publishes it at the realm URI (``{"public_key": ...}``)."""
    with _lock:
        cached = _keys.get(realm_uri)
        if cached and not refresh and time.time() - cached[0] < KEY_TTL_S:
            return cached[1]
    try:
        answer = requests.get(realm_uri, timeout=settings.MONAI_LABEL_AUTH_TIMEOUT)
        answer.raise_for_status()
        key = answer.json()["public_key"]
    except (requests.RequestException, ValueError, KeyError, TypeError) as error:
        logger.error("cannot read the realm's public key at %s: %s", realm_uri, error)
        raise _unreachable() from error
    pem = f"-----BEGIN PUBLIC KEY-----\n{key}\n-----END PUBLIC KEY-----"
    with _lock:
        _keys[realm_uri] = (time.time(), pem)
    return pem


def expected_issuer() -> str | None:
    value = os.environ.get("MSAPP_AUTH_ISSUER", settings.MONAI_LABEL_AUTH_REALM_URI)
    return None if value in ("", "-") else value.rstrip("/")


def _decode(token: str, key: str) -> dict:
    audience = os.environ.get("MSAPP_AUTH_AUDIENCE") or None
    payload = jwt.decode(
        token,
        key,
        algorithms=ALGORITHMS,
        audience=audience,
        leeway=LEEWAY_S,
        options={"require": ["exp"], "verify_aud": audience is not None},
    )
    issuer = expected_issuer()
    if issuer is not None and str(payload.get("iss", "")).rstrip("/") != issuer:
        raise jwt.InvalidIssuerError(f"token issued by {payload.get('iss')!r}, expected {issuer!r}")
    return payload


def _claim(payload: dict, path: str):
    value = payload
    for part in path.split("#"):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def from_token(token: str):
    """The MONAI Label ``User`` a bearer token stands for, or a 401 that says the token was refused."""
    from monailabel.endpoints.user.auth import DEFAULT_USER, User

    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return DEFAULT_USER
    if not token:
        raise _unauthorized("Not authenticated: send Authorization: Bearer <access token> (POST /auth/token).")
    realm = settings.MONAI_LABEL_AUTH_REALM_URI
    try:
        try:
            payload = _decode(token, realm_public_key(realm))
        except jwt.InvalidSignatureError:
            payload = _decode(token, realm_public_key(realm, refresh=True))  # the realm may have rotated its key
    except jwt.ExpiredSignatureError as error:
        raise _unauthorized("The access token has expired; log in again (POST /auth/token).") from error
    except jwt.InvalidTokenError as error:
        logger.warning("refused a token: %s", error)
        raise _unauthorized(f"Could not validate credentials ({type(error).__name__}).") from error
    roles = _claim(payload, settings.MONAI_LABEL_AUTH_TOKEN_ROLES) or []
    return User(
        username=str(payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or payload.get("sub") or ""),
        email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
        name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
        roles=[r for r in roles if isinstance(r, str)] if isinstance(roles, list) else [],
    )


def token_endpoint() -> str:
    realm = settings.MONAI_LABEL_AUTH_REALM_URI.rstrip("/")
    try:
        answer = requests.get(f"{realm}/.well-known/openid-configuration", timeout=settings.MONAI_LABEL_AUTH_TIMEOUT)
        answer.raise_for_status()
        return answer.json()["token_endpoint"]
    except (requests.RequestException, ValueError, KeyError) as error:
        raise _unreachable() from error


def login(username: str, password: str) -> dict:
    """MONAI Label's ``POST /auth/token`` (Slicer's login): the password grant at the realm's token endpoint.
    Stock forwards the identity provider's refusal as a 500; this answers 401."""
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return {"access_token": None, "token_type": None}
    data = {"client_id": settings.MONAI_LABEL_AUTH_CLIENT_ID, "username": username, "password": password,
            "grant_type": "password"}
    try:
        answer = requests.post(token_endpoint(), data=data, timeout=30)
    except requests.RequestException as error:
        raise _unreachable() from error
    if answer.status_code in (400, 401, 403):
        raise _unauthorized("Wrong username or password.")
    if not answer.ok:
        raise HTTPException(status_code=502, detail=f"The identity provider answered {answer.status_code}.")
    return answer.json()


def install() -> None:
    """Route MONAI Label's token check through ``from_token`` (its endpoints look the function up per request)."""
    from monailabel.endpoints.user import auth

    auth.from_token = from_token
    if settings.MONAI_LABEL_AUTH_ENABLE:
        logger.info("auth enabled: realm %s, roles from %s", settings.MONAI_LABEL_AUTH_REALM_URI,
                    settings.MONAI_LABEL_AUTH_TOKEN_ROLES)
