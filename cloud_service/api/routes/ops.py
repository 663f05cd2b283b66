"""Health, readiness and metrics: open to anyone (probes and Prometheus carry no token)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from cloud_service import schemas
from cloud_service.api.deps import ServiceDep

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process serves HTTP")
def read_health() -> schemas.Health:
    return schemas.Health(status="ok")


@router.get("/readyz", summary="Broker connected, store writable, model loaded",
            response_model=schemas.Ready, responses={503: {"model": schemas.Ready}})
def read_readiness(service: ServiceDep) -> JSONResponse:
    state = service.readiness()
    body = schemas.Ready(ready=state.ready, reasons=state.reasons)
    return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def read_metrics(service: ServiceDep) -> Response:
    metrics = service.metrics
    return Response(metrics.render(), media_type=metrics.content_type)
