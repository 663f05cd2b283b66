"""What every router shares: the service behind the app, the bearer-token checks, the path and
query parameter types, and the OpenAPI error responses.

Every write and admin route needs `Authorization: Bearer <api_token>`. Reads under /api/v1
are open unless `api.read_token` is set; then they need that token (or api_token). Tokens are
compared in constant time, whatever the guess. The web UI's session cookie stands for the token
it holds (a write with it also needs the page's CSRF header: web/session.py).
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from cloud_service import schemas
from cloud_service.service import Service
from cloud_service.web.session import (
    CSRF_HEADER,
    SESSION_COOKIE,
    Access,
    access_of,
    session_write_refusal,
)

ID = r"^[A-Za-z0-9_-]{1,64}$"
VERSION = r"^[A-Za-z0-9._+-]{1,64}$"
GatewayId = Annotated[str, Path(pattern=ID, description="gateway id")]
AssetId = Annotated[str, Path(pattern=ID, description="asset id")]
ModelVersion = Annotated[str, Path(pattern=VERSION, description="model version")]
Limit = Annotated[int, Query(ge=1, le=5000, description="rows per page")]
MAX_SEQ = 2**53  # seqs and ids are SQLite integers; a bigger number can match nothing anyway
MAX_TIME = 1e11  # epoch seconds (year 5138): bounds the float filters to finite numbers

# FastAPI's `responses`: extra OpenAPI responses per status code.
Responses = dict[int | str, dict[str, Any]]
UNAUTHORIZED: Responses = {401: {"model": schemas.Problem,
                                 "description": "missing or wrong bearer token"}}
INVALID: Responses = {422: {"model": schemas.ValidationProblem,
                            "description": "the request does not match its schema, or is refused"}}
NOT_FOUND: Responses = {404: {"model": schemas.Problem}}
NOT_JSON: Responses = {400: {"model": schemas.Problem, "description": "the body cannot be parsed"}}

_bearer = HTTPBearer(auto_error=False, description="the service's api_token (every route) or "
                                                    "api.read_token (reads)")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def read_service(request: Request) -> Service:
    """The running service the app was started with (set by create_app's lifespan)."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(read_service)]


def _matches(given: str, token: SecretStr | None) -> bool:
    """Constant time in the token's content, whatever the guess."""
    if token is None:
        return False
    return secrets.compare_digest(given.encode(), token.get_secret_value().encode())


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def require_token(request: Request, service: ServiceDep, creds: Credentials) -> None:
    """Write and admin routes: the api_token only, as a bearer token or as the web UI's
    session cookie with its CSRF header (web/session.py)."""
    session = request.cookies.get(SESSION_COOKIE)
    if (creds is None or creds.scheme.lower() != "bearer") and session is not None:
        refused = session_write_refusal(service.cfg, session, request.headers.get(CSRF_HEADER),
                                        request.headers.get("origin"),
                                        request.headers.get("host"))
        if refused is None:
            return
        status, detail = refused
        raise _unauthorized(detail) if status == 401 else HTTPException(status, detail)
    if creds is None or creds.scheme.lower() != "bearer":
        raise _unauthorized("this route needs 'Authorization: Bearer <api_token>' (the token "
                            "is the service's api_token setting)")
    if not _matches(creds.credentials, service.cfg.api_token):
        raise _unauthorized("the bearer token is not the service's api_token")


def require_read_token(request: Request, service: ServiceDep, creds: Credentials) -> None:
    """Read routes, when api.read_token is set: that token or the api_token (or the web UI's
    session cookie holding either)."""
    cfg = service.cfg
    if cfg.api.read_token is None:
        return
    if creds is None or creds.scheme.lower() != "bearer":
        session = request.cookies.get(SESSION_COOKIE)
        if session is not None and access_of(cfg, session) is not Access.NONE:
            return
        raise _unauthorized("this route needs 'Authorization: Bearer <token>' with the "
                            "service's api.read_token or api_token")
    # Both compared, always: which one matched must not show in the time taken.
    if not (_matches(creds.credentials, cfg.api.read_token)
            | _matches(creds.credentials, cfg.api_token)):
        raise _unauthorized("the bearer token is neither the service's api.read_token nor its "
                            "api_token")


Authorized = [Depends(require_token)]
