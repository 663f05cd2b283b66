"""The HTTP API (FastAPI): fleet reads under /api/v1, health and metrics, model upload and
rollouts.

Every write and admin route needs `Authorization: Bearer <api_token>`. Reads under /api/v1
are open unless `api.read_token` is set; then they need that token (or api_token). The web UI's
session cookie stands for the token it holds (writes also need the page's CSRF header). Tokens are
compared in constant time. /healthz, /readyz, /metrics and the docs stay open. The docs' Swagger
UI and ReDoc files are served by the service itself (fastapi-offline ships them): a plant
network without the internet still sees them.
Errors are JSON: `{"detail": "<what went wrong and what to do>"}` (a list of the fields at fault
when the request does not match its schema).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud_service import __version__, schemas, web
from cloud_service.config import CloudConfig
from cloud_service.deadletters import REASONS
from cloud_service.rollouts import RolloutError
from cloud_service.service import Service
from cloud_service.store import AssetRow, ModelConflict, ModelRow
from cloud_service.web.session import (
    CSRF_HEADER,
    SESSION_COOKIE,
    Access,
    access_of,
    session_write_refusal,
)
from contract.errors import ContractError
from contract.payloads import AlertState

log = logging.getLogger(__name__)
ID = r"^[A-Za-z0-9_-]{1,64}$"
GatewayId = Annotated[str, Path(pattern=ID, description="gateway id")]
AssetId = Annotated[str, Path(pattern=ID, description="asset id")]
Limit = Annotated[int, Query(ge=1, le=5000, description="rows per page")]
MAX_SEQ = 2**53  # seqs and ids are SQLite integers; a bigger number can match nothing anyway
MAX_TIME = 1e11  # epoch seconds (year 5138): bounds the float filters to finite numbers
DOCS_ASSETS = "/docs-assets"  # swagger-ui and redoc files, served from the fastapi-offline package
_bearer = HTTPBearer(auto_error=False, description="the service's api_token (every route) or "
                                                    "api.read_token (reads)")
# FastAPI's `responses`: extra OpenAPI responses per status code.
Responses = dict[int | str, dict[str, Any]]
UNAUTHORIZED: Responses = {401: {"model": schemas.Problem,
                                 "description": "missing or wrong bearer token"}}
INVALID: Responses = {422: {"model": schemas.ValidationProblem,
                            "description": "the request does not match its schema, or is refused"}}
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def service_of(request: Request) -> Service:
    return request.app.state.service


def _matches(given: str, token: SecretStr | None) -> bool:
    """Constant time in the token's content, whatever the guess."""
    if token is None:
        return False
    return secrets.compare_digest(given.encode(), token.get_secret_value().encode())


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def require_token(request: Request, creds: Credentials) -> None:
    """Write and admin routes: the api_token only, as a bearer token or as the web UI's
    session cookie with its CSRF header (web/session.py)."""
    session = request.cookies.get(SESSION_COOKIE)
    if (creds is None or creds.scheme.lower() != "bearer") and session is not None:
        refused = session_write_refusal(service_of(request).cfg, session,
                                        request.headers.get(CSRF_HEADER),
                                        request.headers.get("origin"),
                                        request.headers.get("host"))
        if refused is None:
            return
        status, detail = refused
        raise _unauthorized(detail) if status == 401 else HTTPException(status, detail)
    if creds is None or creds.scheme.lower() != "bearer":
        raise _unauthorized("this route needs 'Authorization: Bearer <api_token>' (the token "
                            "is the service's api_token setting)")
    if not _matches(creds.credentials, service_of(request).cfg.api_token):
        raise _unauthorized("the bearer token is not the service's api_token")


def require_read_token(request: Request, creds: Credentials) -> None:
    """Read routes, when api.read_token is set: that token or the api_token."""
    cfg = service_of(request).cfg
    if cfg.api.read_token is None:
        return
    if creds is None or creds.scheme.lower() != "bearer":
        session = request.cookies.get(SESSION_COOKIE)  # the web UI's sign-in
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


def create_app(cfg: CloudConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = Service(cfg)
        app.state.service = service
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPIOffline(
        title="pdm cloud service", version=__version__, lifespan=lifespan,
        static_url=DOCS_ASSETS, favicon_url=f"{DOCS_ASSETS}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
        description="Fleet view of the predictive-maintenance system: gateways, assets, ticks, "
                    "cloud predictions next to the edge's, alerts, dead letters and model "
                    "bundles.")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the service "
                                       "log has the details"}, status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette names only the methods of the route that matched first; a client
            # needs every method the path serves (RFC 9110, 15.5.6).
            methods = _allowed_methods(request.app, request.url.path)
            if methods:
                exc = StarletteHTTPException(405, exc.detail, headers={
                    **(exc.headers or {}), "Allow": ", ".join(methods)})
        return await http_exception_handler(request, exc)

    app.include_router(_ops_routes())
    app.include_router(_api_routes(), prefix="/api/v1", responses=UNAUTHORIZED,
                       dependencies=[Depends(require_read_token)])
    app.include_router(web.create_router())
    return app


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the OpenAPI document gives the path (the document is what clients read)."""
    methods: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            methods |= {m.upper() for m in operations if m != "parameters"}
    return sorted(methods)


def _ops_routes() -> APIRouter:
    r = APIRouter(tags=["operations"])

    @r.get("/healthz", summary="The process serves HTTP")
    def healthz() -> dict:
        return {"status": "ok"}

    @r.get("/readyz", summary="Broker connected, store writable, model loaded",
           response_model=schemas.Ready, responses={503: {"model": schemas.Ready}})
    def readyz(request: Request):
        state = service_of(request).readiness()
        body = {"ready": state.ready, "reasons": state.reasons}
        return JSONResponse(body, status_code=200 if state.ready else 503)

    @r.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics(request: Request) -> Response:
        m = service_of(request).metrics
        return Response(m.render(), media_type=m.content_type)

    return r


def _asset_out(row: AssetRow) -> schemas.Asset:
    return schemas.Asset(
        gateway=row["gateway"], asset=row["asset"], first_seen=row["first_seen"],
        last_seen=row["last_seen"], last_seq=row["last_seq"], ticks=row["ticks"] or 0,
        state=row["cloud_state"], state_since=row["cloud_state_since"],
        probability=row["cloud_probability"], rul=row["cloud_rul"], scored_seq=row["cloud_seq"],
        model_version=row["cloud_model_version"], edge_probability=row["edge_probability"],
        edge_rul=row["edge_rul"], edge_seq=row["edge_seq"] if row["edge_seq"] != -1 else None,
        edge_model_version=row["edge_model_version"])


def _model_out(row: ModelRow, request: Request) -> schemas.Model:
    service = service_of(request)
    scoring = service.manifest is not None and service.manifest.version == row["version"]
    return schemas.Model(
        version=row["version"], created=row["created"], registered_at=row["registered_at"],
        source=row["source"], sha256=row["sha256"], size=row["size"],
        signature=row["signature"], window=row["window"], features=json.loads(row["features"]),
        scoring=scoring,
        bundle_url=str(request.url_for("model_bundle", version=row["version"])))


def _api_routes() -> APIRouter:
    r = APIRouter()

    @r.get("/gateways", tags=["fleet"], response_model=list[schemas.Gateway],
           summary="Gateways with their online state and when they were last heard from")
    def gateways(request: Request):
        rows = service_of(request).store.gateways()
        return [schemas.Gateway(**{**row, "online": None if row["online"] is None
                                   else bool(row["online"])}) for row in rows]

    @r.get("/assets", tags=["fleet"], response_model=list[schemas.Asset],
           summary="Assets with their latest cloud and edge scores and cloud alert state")
    def assets(request: Request,
               gateway: Annotated[str | None, Query(pattern=ID)] = None):
        return [_asset_out(row) for row in service_of(request).store.assets(gateway)]

    @r.get("/assets/{gateway}/{asset}", tags=["fleet"], response_model=schemas.Asset,
           responses={404: {"model": schemas.Problem}})
    def asset(request: Request, gateway: GatewayId, asset: AssetId):
        row = service_of(request).store.asset(gateway, asset)
        if row is None:
            raise HTTPException(404, f"no asset {asset!r} on gateway {gateway!r} has sent ticks")
        return _asset_out(row)

    @r.get("/assets/{gateway}/{asset}/ticks", tags=["fleet"], response_model=schemas.TickPage,
           summary="Stored ticks of one asset, by seq (and optionally time) range")
    def ticks(request: Request, gateway: GatewayId, asset: AssetId,
              after_seq: Annotated[int, Query(ge=-1, le=MAX_SEQ,
                                              description="ticks with seq > this")] = -1,
              to_seq: Annotated[int | None, Query(ge=0, le=MAX_SEQ,
                                                  description="up to this seq")] = None,
              since: Annotated[float | None, Query(ge=-MAX_TIME, le=MAX_TIME,
                                                   description="tick time >= (epoch s)")] = None,
              until: Annotated[float | None, Query(ge=-MAX_TIME, le=MAX_TIME,
                                                   description="tick time < (epoch s)")] = None,
              limit: Limit = 500):
        rows = service_of(request).store.ticks(gateway, asset, after_seq, to_seq, since, until,
                                               limit)
        nxt = rows[-1]["seq"] if len(rows) == limit else None
        return schemas.TickPage(items=[schemas.Tick(**row) for row in rows], next_after_seq=nxt)

    @r.get("/assets/{gateway}/{asset}/predictions", tags=["fleet"],
           response_model=schemas.PredictionPage,
           summary="Cloud predictions of one asset next to the edge's score of the same window")
    def predictions(request: Request, gateway: GatewayId, asset: AssetId,
                    after_seq: Annotated[int, Query(ge=-1, le=MAX_SEQ)] = -1,
                    to_seq: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
                    limit: Limit = 500):
        rows = service_of(request).store.predictions(gateway, asset, after_seq, to_seq, limit)
        nxt = rows[-1]["seq"] if len(rows) == limit else None
        items = [schemas.Prediction(**{k: v for k, v in row.items()
                                       if k not in ("gateway", "asset")}) for row in rows]
        return schemas.PredictionPage(items=items, next_after_seq=nxt)

    @r.get("/alerts", tags=["fleet"], response_model=schemas.AlertPage,
           summary="Cloud alert transitions, oldest first")
    def alerts(request: Request,
               state: AlertState | None = None,
               gateway: Annotated[str | None, Query(pattern=ID)] = None,
               asset: Annotated[str | None, Query(pattern=ID)] = None,
               since: Annotated[float | None, Query(ge=-MAX_TIME, le=MAX_TIME,
                                                      description="published at >= (epoch s)")]
               = None,
               after_id: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0, limit: Limit = 500):
        rows = service_of(request).store.alerts(gateway, asset, state.value if state else None,
                                                since, after_id, limit)
        nxt = rows[-1]["id"] if len(rows) == limit else None
        return schemas.AlertPage(items=[schemas.Alert(**row) for row in rows], next_after_id=nxt)

    @r.get("/dead-letters", tags=["admin"], response_model=schemas.DeadLetterPage,
           dependencies=Authorized, responses=UNAUTHORIZED,
           summary="Refused payloads with the reason (admin)")
    def dead_letters(request: Request,
                     reason: Annotated[str | None, Query(
                         description=f"one of {', '.join(REASONS)}")] = None,
                     after_id: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0, limit: Limit = 100):
        rows = service_of(request).store.dead_letters(reason, after_id, limit)
        items = [schemas.DeadLetter(
            **{k: v for k, v in row.items() if k != "payload"},
            payload_base64=base64.b64encode(row["payload"] or b"").decode()) for row in rows]
        nxt = rows[-1]["id"] if len(rows) == limit else None
        return schemas.DeadLetterPage(items=items, next_after_id=nxt)

    @r.get("/models", tags=["models"], response_model=list[schemas.Model],
           summary="Registered model bundles")
    def models(request: Request):
        return [_model_out(row, request) for row in service_of(request).store.models()]

    @r.post("/models", tags=["models"], status_code=201, response_model=schemas.Model,
            dependencies=Authorized,
            summary="Upload a signed bundle (tar); it is verified against the trusted keys",
            responses={**UNAUTHORIZED, 200: {"model": schemas.Model,
                                             "description": "already registered"},
                       409: {"model": schemas.Problem}, 413: {"model": schemas.Problem},
                       **INVALID},
            openapi_extra={"requestBody": {"required": True, "content": {
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in ("application/x-tar", "application/octet-stream")}}})
    async def upload_model(request: Request):
        service = service_of(request)
        limit = service.cfg.registry.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"bundle of {declared} bytes exceeds the {limit} byte "
                                     "limit (registry.max_upload_bytes)")
        data = bytearray()
        async for chunk in request.stream():
            data.extend(chunk)
            if len(data) > limit:
                raise HTTPException(413, f"bundle exceeds the {limit} byte limit "
                                         "(registry.max_upload_bytes)")
        if not data:
            raise HTTPException(422, "the request body is empty; send the bundle tar "
                                     "(python -c 'from contract.bundle import pack_bundle ...')")
        try:
            row, created = await run_in_threadpool(service.registry.register_tar, bytes(data))
        except ModelConflict as exc:
            raise HTTPException(409, str(exc)) from None
        except ContractError as exc:
            raise HTTPException(422, f"bundle refused: {exc}") from None
        out = _model_out(row, request)
        return JSONResponse(out.model_dump(mode="json"), status_code=201 if created else 200)

    @r.get("/models/{version}/bundle", tags=["models"], dependencies=Authorized,
           name="model_bundle", response_class=FileResponse,
           summary="Download a registered bundle tar (what gateways fetch)",
           responses={**UNAUTHORIZED, 404: {"model": schemas.Problem},
                      200: {"content": {"application/x-tar": {}}}})
    def model_bundle(request: Request,
                     version: Annotated[str, Path(pattern=r"^[A-Za-z0-9._+-]{1,64}$")]):
        service = service_of(request)
        row = service.store.model(version)
        path = service.registry.tar_path(version)
        if row is None or path is None:
            raise HTTPException(404, f"no model {version!r} is registered; GET /api/v1/models "
                                     "lists them")
        return FileResponse(path, media_type="application/x-tar",
                            filename=f"{version}.tar", headers={"ETag": f'"{row["sha256"]}"'})

    @r.get("/models/{version}/shadow", tags=["models"], response_model=schemas.ShadowReport,
           responses={404: {"model": schemas.Problem}},
           summary="How a model run in shadow on gateways compares, per asset, with the "
                   "active edge model and the cloud's full model")
    def shadow_report(request: Request,
                      version: Annotated[str, Path(pattern=r"^[A-Za-z0-9._+-]{1,64}$")]):
        service = service_of(request)
        row = service.store.model(version)
        cut = service.manifest.thresholds.decision if service.manifest else 0.5
        shadow_cut = (json.loads(row["manifest"])["thresholds"]["decision"]
                      if row and row.get("manifest") else cut)
        assets = service.store.shadow_report(version, shadow_cut, cut)
        if not assets:
            raise HTTPException(404, f"no shadow scores of {version!r} have arrived; start one "
                                     "with POST /api/v1/rollouts {\"action\": \"shadow\", ...}")
        return schemas.ShadowReport(
            version=version, decision_threshold=shadow_cut, cloud_decision_threshold=cut,
            windows=sum(a["windows"] for a in assets),
            agreement_active=_weighted(assets, "agreement_active", "windows"),
            agreement_cloud=_weighted(assets, "agreement_cloud", "cloud_scored"),
            active_agreement_cloud=_weighted(assets, "active_agreement_cloud", "cloud_scored"),
            assets=assets)

    _rollout_routes(r)
    return r


def _weighted(rows: Sequence[Mapping[str, Any]], key: str, weight: str) -> float | None:
    """The fleet-wide share from per-asset shares."""
    total = sum(r[weight] for r in rows if r[key] is not None)
    if not total:
        return None
    return sum(r[key] * r[weight] for r in rows if r[key] is not None) / total


RolloutId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,64}$", description="rollout id")]
NOT_JSON: Responses = {400: {"model": schemas.Problem, "description": "the body cannot be parsed"}}
ROLLOUT_ERRORS: Responses = {**UNAUTHORIZED, 404: {"model": schemas.Problem},
                              409: {"model": schemas.Problem}, 503: {"model": schemas.Problem}}


def _base_url(request: Request) -> str:
    public = service_of(request).cfg.public_url
    return public or str(request.base_url)


def _rollout_call(request: Request, action, *args) -> dict:
    service = service_of(request)
    if request.method == "POST" and not service.consumer.connected.is_set():
        raise HTTPException(503, "not connected to the MQTT broker: announcements cannot be "
                                 "published now; try again when /readyz is green")
    try:
        return action(*args)
    except RolloutError as exc:
        raise HTTPException(exc.status, str(exc)) from None


def _rollout_routes(r: APIRouter) -> None:
    @r.post("/rollouts", tags=["rollouts"], status_code=201, response_model=schemas.Rollout,
            dependencies=Authorized, responses={**ROLLOUT_ERRORS, **NOT_JSON, **INVALID},
            summary="Roll a registered model out to all gateways, a list, or a percentage")
    def create_rollout(request: Request, body: schemas.RolloutRequest):
        rollouts = service_of(request).rollouts
        return _rollout_call(request, rollouts.create, body.version, body.gateways,
                             body.percent, _base_url(request), body.action)

    @r.get("/rollouts", tags=["rollouts"], response_model=list[schemas.Rollout],
           summary="Rollouts with their per-gateway steps")
    def rollouts(request: Request):
        return service_of(request).rollouts.list()

    @r.get("/rollouts/{rollout_id}", tags=["rollouts"], response_model=schemas.Rollout,
           responses={404: {"model": schemas.Problem}},
           summary="One rollout: each targeted gateway's step, from its own reports")
    def rollout(request: Request, rollout_id: RolloutId):
        return _rollout_call(request, service_of(request).rollouts.view, rollout_id)

    @r.post("/rollouts/{rollout_id}/pause", tags=["rollouts"], response_model=schemas.Rollout,
            dependencies=Authorized, responses=ROLLOUT_ERRORS,
            summary="Withdraw the announcement from gateways that have not started")
    def pause_rollout(request: Request, rollout_id: RolloutId):
        return _rollout_call(request, service_of(request).rollouts.pause, rollout_id)

    @r.post("/rollouts/{rollout_id}/resume", tags=["rollouts"], response_model=schemas.Rollout,
            dependencies=Authorized, responses=ROLLOUT_ERRORS,
            summary="Announce again to the gateways a pause held back")
    def resume_rollout(request: Request, rollout_id: RolloutId):
        return _rollout_call(request, service_of(request).rollouts.resume, rollout_id,
                             _base_url(request))

    @r.post("/rollouts/{rollout_id}/rollback", tags=["rollouts"],
            response_model=schemas.Rollout, dependencies=Authorized, responses=ROLLOUT_ERRORS,
            summary="Send gateways that started back to their previous version")
    def rollback_rollout(request: Request, rollout_id: RolloutId):
        return _rollout_call(request, service_of(request).rollouts.rollback, rollout_id,
                             _base_url(request))
