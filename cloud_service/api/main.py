"""The HTTP API (FastAPI): the app, its error handlers, and the routers mounted on it.

Resource routers live in `routes/` (one per resource, as FastAPI's full-stack template lays
them out); the fleet's are served under /api/v1 behind the read token, when one is set.
/healthz, /readyz, /metrics and the docs stay open. The docs' Swagger UI and ReDoc files are
served by the service itself (fastapi-offline ships them): a plant network without the
internet still sees them.
Errors are JSON: `{"detail": "<what went wrong and what to do>"}` (a list of the fields at fault
when the request does not match its schema).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud_service import __version__, web
from cloud_service.api.deps import UNAUTHORIZED, require_read_token
from cloud_service.api.routes import (
    alerts,
    assets,
    dead_letters,
    drift,
    gateways,
    models,
    ops,
    rollouts,
)
from cloud_service.config import CloudConfig
from cloud_service.service import Service

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"
DOCS_ASSETS = "/docs-assets"  # swagger-ui and redoc files, served from the fastapi-offline package

api_router = APIRouter()
for _resource in (gateways, assets, drift, alerts, dead_letters, models, rollouts):
    api_router.include_router(_resource.router)


def create_app(cfg: CloudConfig) -> FastAPI:
    """The app for one service process; the service starts and stops with it."""

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
    async def report_internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the service "
                                       "log has the details"}, status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def report_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette names only the methods of the route that matched first; a client
            # needs every method the path serves (RFC 9110, 15.5.6).
            methods = _allowed_methods(request.app, request.url.path)
            if methods:
                exc = StarletteHTTPException(405, exc.detail, headers={
                    **(exc.headers or {}), "Allow": ", ".join(methods)})
        return await http_exception_handler(request, exc)

    app.include_router(ops.router)
    app.include_router(api_router, prefix=API_PREFIX, responses=UNAUTHORIZED,
                       dependencies=[Depends(require_read_token)])
    app.include_router(web.router)
    return app


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the OpenAPI document gives the path (the document is what clients read)."""
    methods: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            methods |= {m.upper() for m in operations if m != "parameters"}
    return sorted(methods)
