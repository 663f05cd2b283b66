"""Gateways: online state (from the retained status) and when each was last heard from."""

from __future__ import annotations

from fastapi import APIRouter

from cloud_service import schemas
from cloud_service.api.deps import ServiceDep
from cloud_service.store import GatewayRow

router = APIRouter(prefix="/gateways", tags=["fleet"])


def gateway_out(row: GatewayRow) -> schemas.Gateway:
    online = None if row["online"] is None else bool(row["online"])
    return schemas.Gateway(**{**row, "online": online})


@router.get("", summary="Gateways with their online state and when they were last heard from")
def read_gateways(service: ServiceDep) -> list[schemas.Gateway]:
    return [gateway_out(row) for row in service.store.gateways()]
