"""The operator pages: fleet, asset, alerts, models and rollouts, dead letters, sign-in.

Each page is rendered on the server from the store (Jinja2); its live part is a fragment the
page's script fetches again every few seconds (`/ui/...`, the same template the page
includes), so one template draws a table whether it came with the page or with an update.
Charts and the acknowledge button talk to the public API under /api/v1 with the session
cookie. Nothing here is in the OpenAPI document: these routes are for browsers.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from cloud_service import __version__
from cloud_service.config import CloudConfig
from cloud_service.drift import describe_asset_drift
from cloud_service.service import Service
from cloud_service.store import DeadLetterRow, StoredAlert
from cloud_service.web import filters
from cloud_service.web.session import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    Access,
    access_of,
    csrf_token,
    is_signed_in,
)
from cloud_service.web.views import (
    STATES,
    UNSCORED,
    AlertQuery,
    AlertStateName,
    FleetQuery,
    FleetSort,
    Period,
    StateFilter,
    fleet_rows,
    gateway_status,
    select_fleet,
    sensor_names,
)

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
ID = r"^[A-Za-z0-9_-]{1,64}$"
MAYBE_ID = r"^([A-Za-z0-9_-]{1,64})?$"
FORM_LIMIT = 8192  # bytes of a sign-in form; a token is far shorter
ALERT_ROWS = 500  # newest alerts a page shows
PAGE = 5000  # rows per store read
DEAD_LETTER_ROWS = 200
DEFAULT_SENSORS = 3
PERIODS: dict[Period, int | None] = {"1h": 3600, "24h": 86_400, "7d": 7 * 86_400,
                                     "30d": 30 * 86_400, "all": None}
# Scripts, styles and charts come from this service only; no frame may embed the pages.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True,
                          lstrip_blocks=True)
filters.install(_env)
templates = Jinja2Templates(env=_env)
# Every file under static/, found once: a request names one of these or gets a 404.
STATIC_FILES = {p.relative_to(STATIC).as_posix(): p for p in STATIC.rglob("*") if p.is_file()}
_MEDIA = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

router = APIRouter(include_in_schema=False)  # pages for browsers, not API operations
Row = TypeVar("Row", StoredAlert, DeadLetterRow)
GatewayId = Annotated[str, PathParam(pattern=ID)]
AssetId = Annotated[str, PathParam(pattern=ID)]


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _config(request: Request) -> CloudConfig:
    return _service(request).cfg


def _cookie(request: Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE)


def read_access(request: Request) -> Access:
    return access_of(_config(request), _cookie(request))


PageAccess = Annotated[Access, Depends(read_access)]


def _render(request: Request, name: str, access: Access, status_code: int = 200,
            **context: Any) -> Response:
    """A page or fragment with what every template needs (who is signed in, the CSRF value)."""
    token = _cookie(request)
    cfg = _config(request)
    base = {"access": access, "Access": Access, "version": __version__,
            "signed_in": is_signed_in(cfg, token),
            "csrf": csrf_token(token) if token and access is Access.WRITE else "",
            "path": request.url.path}
    return templates.TemplateResponse(request, name, {**base, **context},
                                      status_code=status_code, headers=SECURITY_HEADERS)


def _sign_in_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/sign-in?{urlencode({'next': target})}", status_code=303,
                            headers=SECURITY_HEADERS)


def _signed_out_fragment() -> Response:
    """A fragment request whose session ended: the script sends the browser to sign in."""
    return HTMLResponse("<p class=notice>Signed out: sign in again.</p>", status_code=401,
                        headers=SECURITY_HEADERS)


def _safe_next(target: str | None) -> str:
    """Only a path on this service (no scheme, no host, no `//host`): not an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def fleet_query(state: Annotated[Literal["", StateFilter], Query()] = "",
                gateway: Annotated[str, Query(pattern=MAYBE_ID)] = "",
                q: Annotated[str, Query(max_length=64)] = "",
                sort: FleetSort = "state", desc: bool = False) -> FleetQuery:
    """The fleet filter from the address; an empty field (the form's "any") means no filter."""
    return FleetQuery(state=state or None, gateway=gateway or None, text=q, sort=sort,
                      descending=desc)


def alert_query(state: Annotated[Literal["", AlertStateName], Query()] = "",
                gateway: Annotated[str, Query(pattern=MAYBE_ID)] = "",
                asset: Annotated[str, Query(pattern=MAYBE_ID)] = "",
                acknowledged: Literal["", "yes", "no"] = "",
                period: Period = "7d") -> AlertQuery:
    """The alert filter from the address; an empty field means no filter."""
    return AlertQuery(state=state or None, gateway=gateway or None, asset=asset or None,
                      acknowledged=acknowledged, period=period)


def _fleet_context(request: Request, query: FleetQuery) -> dict[str, Any]:
    store = _service(request).store
    gateways = store.gateways()
    view = select_fleet(fleet_rows(store.assets(), gateways, store.asset_drifts()), query,
                        gateways=gateway_status(gateways))
    return {"view": view, "fleet": query, "states": (*STATES, UNSCORED), "now": time.time()}


@router.get("/static/{name:path}")
def read_static(name: str) -> FileResponse:
    path = STATIC_FILES.get(name)
    if path is None:
        raise HTTPException(404, f"no static file {name!r}")
    return FileResponse(path, media_type=_MEDIA.get(path.suffix),
                        headers={"Cache-Control": "no-cache",
                                 "X-Content-Type-Options": "nosniff"})


@router.get("/sign-in")
def read_sign_in(request: Request,
                 next: Annotated[str, Query(max_length=2048)] = "/") -> Response:
    return _render(request, "sign_in.html", read_access(request), next=_safe_next(next),
                   error="")


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    body = bytearray()
    async for chunk in request.stream():  # read no further than the limit
        body.extend(chunk)
        if len(body) > FORM_LIMIT:
            raise HTTPException(413, f"the sign-in form is limited to {FORM_LIMIT} bytes")
    try:
        form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
    except ValueError:
        raise HTTPException(400, "the sign-in form has more fields than token and next; "
                                 "send it from the sign-in page") from None
    token = (form.get("token") or [""])[0].strip()
    target = _safe_next((form.get("next") or ["/"])[0])
    cfg = _config(request)
    access = access_of(cfg, token) if token else Access.NONE
    granted = token and (access is Access.WRITE or
                         (access is Access.READ and cfg.api.read_token is not None))
    metrics = _service(request).metrics.ui_sign_ins
    if not granted:
        metrics.labels("refused").inc()  # many of these: someone is guessing
        error = ("Paste a token." if not token else
                 "That token is neither the service's api.read_token nor its api_token.")
        return _render(request, "sign_in.html", read_access(request),
                       status_code=422 if not token else 401, next=target, error=error)
    metrics.labels("accepted").inc()
    response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(SESSION_COOKIE, token, max_age=SESSION_SECONDS, path="/",
                        httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/sign-out")
def sign_out(request: Request) -> Response:
    response = RedirectResponse("/sign-in", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


@router.get("/")
def read_fleet_page(request: Request, access: PageAccess,
                    query: Annotated[FleetQuery, Depends(fleet_query)]) -> Response:
    if access is Access.NONE:
        return _sign_in_redirect(request)
    return _render(request, "fleet.html", access, **_fleet_context(request, query))


@router.get("/ui/fleet")
def read_fleet_fragment(request: Request, access: PageAccess,
                        query: Annotated[FleetQuery, Depends(fleet_query)]) -> Response:
    if access is Access.NONE:
        return _signed_out_fragment()
    return _render(request, "_fleet.html", access, **_fleet_context(request, query))


@router.get("/assets/{gateway}/{asset}")
def read_asset_page(request: Request, access: PageAccess, gateway: GatewayId,
                    asset: AssetId,
                    sensors: Annotated[str, Query(max_length=2048)] = "") -> Response:
    if access is Access.NONE:
        return _sign_in_redirect(request)
    context = _asset_context(request, gateway, asset)
    if context is None:
        return _render(request, "not_found.html", access, status_code=404,
                       what=f"No asset {asset!r} on gateway {gateway!r} has sent ticks.")
    names = context["sensor_names"]
    chosen = [s for s in sensors.split(",") if s] if sensors else names[:DEFAULT_SENSORS]
    unknown = [s for s in chosen if s not in names]
    if unknown:
        raise HTTPException(422, f"unknown sensor(s) {', '.join(map(repr, unknown))}; this "
                                 f"asset has {', '.join(names) or 'no ticks yet'}")
    service = _service(request)
    drift = describe_asset_drift(service.store, gateway, asset, service.manifest,
                                 service.checks_drift)
    return _render(request, "asset.html", access, chosen=chosen, drift=drift, **context)


@router.get("/ui/assets/{gateway}/{asset}")
def read_asset_fragment(request: Request, access: PageAccess, gateway: GatewayId,
                        asset: AssetId) -> Response:
    if access is Access.NONE:
        return _signed_out_fragment()
    context = _asset_context(request, gateway, asset)
    if context is None:
        raise HTTPException(404, f"no asset {asset!r} on gateway {gateway!r}")
    return _render(request, "_asset.html", access, **context)


@router.get("/ui/assets/{gateway}/{asset}/drift")
def read_drift_fragment(request: Request, access: PageAccess, gateway: GatewayId,
                        asset: AssetId) -> Response:
    if access is Access.NONE:
        return _signed_out_fragment()
    context = _drift_context(request, gateway, asset)
    if context is None:
        raise HTTPException(404, f"no asset {asset!r} on gateway {gateway!r}")
    return _render(request, "_drift.html", access, **context)


@router.get("/alerts")
def read_alerts_page(request: Request, access: PageAccess,
                     query: Annotated[AlertQuery, Depends(alert_query)]) -> Response:
    if access is Access.NONE:
        return _sign_in_redirect(request)
    return _render(request, "alerts.html", access,
                   **_alerts_context(request, query))


@router.get("/ui/alerts")
def read_alerts_fragment(request: Request, access: PageAccess,
                         query: Annotated[AlertQuery, Depends(alert_query)]) -> Response:
    if access is Access.NONE:
        return _signed_out_fragment()
    return _render(request, "_alerts.html", access, **_alerts_context(request, query))


@router.get("/models")
def read_models_page(request: Request, access: PageAccess) -> Response:
    if access is Access.NONE:
        return _sign_in_redirect(request)
    return _render(request, "models.html", access, **_models_context(request))


@router.get("/ui/models")
def read_models_fragment(request: Request, access: PageAccess) -> Response:
    if access is Access.NONE:
        return _signed_out_fragment()
    return _render(request, "_models.html", access, **_models_context(request))


@router.get("/dead-letters")
def read_dead_letters_page(request: Request, access: PageAccess,
                           reason: Annotated[str, Query(max_length=64)] = "") -> Response:
    if access is Access.NONE:
        return _sign_in_redirect(request)
    return _render(request, "dead_letters.html", access,
                   **_dead_letters_context(request, access, reason))


@router.get("/ui/dead-letters")
def read_dead_letters_fragment(request: Request, access: PageAccess,
                               reason: Annotated[str, Query(max_length=64)] = "") -> Response:
    if access is Access.NONE:
        return _signed_out_fragment()
    return _render(request, "_dead_letters.html", access,
                   **_dead_letters_context(request, access, reason))


def _drift_context(request: Request, gateway: str, asset: str) -> dict[str, Any] | None:
    service = _service(request)
    if service.store.asset(gateway, asset) is None:
        return None
    return {"drift": describe_asset_drift(service.store, gateway, asset, service.manifest,
                                          service.checks_drift), "now": time.time()}


def _asset_context(request: Request, gateway: str, asset: str) -> dict[str, Any] | None:
    store = _service(request).store
    row = store.asset(gateway, asset)
    if row is None:
        return None
    last = row["last_seq"]
    latest = store.ticks(gateway, asset, last - 1, last, None, None, 1) if last is not None else []
    status = {g["gateway"]: g for g in store.gateways()}.get(gateway)
    alerts = _newest(lambda after: store.alerts(gateway, asset, None, None, after, PAGE),
                     ALERT_ROWS)
    return {"asset": row, "gateway_row": status, "alerts": alerts, "now": time.time(),
            "sensor_names": sensor_names(latest[0]["values"] if latest else None),
            "latest": latest[0] if latest else None}


def _alerts_context(request: Request, query: AlertQuery) -> dict[str, Any]:
    store = _service(request).store
    seconds = PERIODS[query.period]
    since = time.time() - seconds if seconds is not None else None
    acknowledged = {"": None, "yes": True, "no": False}[query.acknowledged]
    alerts = _newest(lambda after: store.alerts(query.gateway, query.asset, query.state, since,
                                                after, PAGE, acknowledged=acknowledged),
                     ALERT_ROWS)
    return {"alerts": alerts, "chosen": query, "periods": list(PERIODS),
            "alert_states": STATES, "now": time.time()}


def _newest(read_page: Callable[[int], list[Row]], keep: int) -> list[Row]:
    """The newest `keep` rows, newest first, from a read that pages oldest first by id (the
    API's order, which both store backends serve from the primary key)."""
    rows: deque[Row] = deque(maxlen=keep)
    after = 0
    while True:
        page = read_page(after)
        rows.extend(page)
        if len(page) < PAGE:
            return list(reversed(rows))
        after = page[-1]["id"]


def _models_context(request: Request) -> dict[str, Any]:
    service = _service(request)
    scoring = service.manifest.version if service.manifest is not None else None
    return {"models": list(reversed(service.store.models())), "scoring": scoring,
            "rollouts": list(reversed(service.rollouts.list())), "now": time.time()}


def _dead_letters_context(request: Request, access: Access, reason: str) -> dict[str, Any]:
    if access is not Access.WRITE:
        return {"letters": [], "counts": {}, "reason": reason, "allowed": False}
    store = _service(request).store
    letters = _newest(lambda after: store.dead_letters(reason or None, after, PAGE),
                      DEAD_LETTER_ROWS)
    return {"letters": letters, "counts": store.dead_letter_counts(),
            "reason": reason, "allowed": True, "now": time.time()}
