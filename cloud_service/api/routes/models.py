"""Model bundles: the registered ones, upload of a signed bundle, the tar gateways download,
and how a model run in shadow on gateways compares."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from cloud_service import schemas
from cloud_service.api.deps import (
    INVALID,
    NOT_FOUND,
    UNAUTHORIZED,
    Authorized,
    ModelVersion,
    ServiceDep,
)
from cloud_service.service import Service
from cloud_service.store import ModelConflict, ModelRow
from contract.errors import ContractError

router = APIRouter(prefix="/models", tags=["models"])
BUNDLE_ROUTE = "read_model_bundle"  # the route name bundle URLs are built from


def model_out(row: ModelRow, service: Service, request: Request) -> schemas.Model:
    scoring = service.manifest is not None and service.manifest.version == row["version"]
    return schemas.Model(
        version=row["version"], created=row["created"], registered_at=row["registered_at"],
        source=row["source"], sha256=row["sha256"], size=row["size"],
        signature=row["signature"], window=row["window"], features=json.loads(row["features"]),
        scoring=scoring,
        bundle_url=str(request.url_for(BUNDLE_ROUTE, version=row["version"])))


@router.get("", summary="Registered model bundles")
def read_models(service: ServiceDep, request: Request) -> list[schemas.Model]:
    return [model_out(row, service, request) for row in service.store.models()]


@router.post(
    "", status_code=201, response_model=schemas.Model, dependencies=Authorized,
    summary="Upload a signed bundle (tar); it is verified against the trusted keys",
    responses={**UNAUTHORIZED, 200: {"model": schemas.Model, "description": "already registered"},
               409: {"model": schemas.Problem}, 413: {"model": schemas.Problem}, **INVALID},
    openapi_extra={"requestBody": {"required": True, "content": {
        media: {"schema": {"type": "string", "format": "binary"}}
        for media in ("application/x-tar", "application/octet-stream")}}})
async def upload_model(service: ServiceDep, request: Request) -> JSONResponse:
    # The body is read here, not declared: it is streamed and cut off at the size limit.
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
    out = model_out(row, service, request)
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if created else 200)


@router.get("/{version}/bundle", dependencies=Authorized, name=BUNDLE_ROUTE,
            response_class=FileResponse,
            summary="Download a registered bundle tar (what gateways fetch)",
            responses={**UNAUTHORIZED, **NOT_FOUND, 200: {"content": {"application/x-tar": {}}}})
def read_model_bundle(service: ServiceDep, version: ModelVersion) -> FileResponse:
    row = service.store.model(version)
    path = service.registry.tar_path(version)
    if row is None or path is None:
        raise HTTPException(404, f"no model {version!r} is registered; GET /api/v1/models "
                                 "lists them")
    return FileResponse(path, media_type="application/x-tar",
                        filename=f"{version}.tar", headers={"ETag": f'"{row["sha256"]}"'})


@router.get("/{version}/shadow", responses=NOT_FOUND,
            summary="How a model run in shadow on gateways compares, per asset, with the "
                    "active edge model and the cloud's full model")
def read_shadow_report(service: ServiceDep, version: ModelVersion) -> schemas.ShadowReport:
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
        assets=[schemas.ShadowAsset(**a) for a in assets])


def _weighted(rows: Sequence[Mapping[str, Any]], key: str, weight: str) -> float | None:
    """The fleet-wide share from per-asset shares."""
    total = sum(r[weight] for r in rows if r[key] is not None)
    if not total:
        return None
    return sum(r[key] * r[weight] for r in rows if r[key] is not None) / total
