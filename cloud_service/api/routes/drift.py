"""Input drift: per asset, how far its recent inputs are from the model's training data
(per feature PSI and state, checked by the scorer: cloud_service/drift.py), and the events
raised when an asset crossed the drift threshold and cleared when it came back."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query

from cloud_service import schemas
from cloud_service.api.deps import ID, MAX_SEQ, NOT_FOUND, AssetId, GatewayId, Limit, ServiceDep
from cloud_service.drift import describe_asset_drift
from cloud_service.store import StoredDriftEvent

router = APIRouter(tags=["drift"])


def drift_event_out(row: StoredDriftEvent) -> schemas.DriftEvent:
    return schemas.DriftEvent(
        id=row["id"], gateway=row["gateway"], asset=row["asset"], kind=row["kind"],
        score=row["score"], features=json.loads(row["features"]),
        model_version=row["model_version"], at=row["at"])


@router.get("/assets/{gateway}/{asset}/drift", responses=NOT_FOUND,
            summary="Input drift of one asset: per feature PSI against the training data")
def read_asset_drift(service: ServiceDep, gateway: GatewayId,
                     asset: AssetId) -> schemas.AssetDrift:
    if service.store.asset(gateway, asset) is None:
        raise HTTPException(404, f"no asset {asset!r} on gateway {gateway!r} has sent ticks")
    return describe_asset_drift(service.store, gateway, asset, service.manifest,
                                service.checks_drift)


@router.get("/drift-events", summary="Assets crossing the drift threshold and coming back, "
                                     "oldest first")
def read_drift_events(
        service: ServiceDep,
        gateway: Annotated[str | None, Query(pattern=ID)] = None,
        asset: Annotated[str | None, Query(pattern=ID)] = None,
        kind: Annotated[Literal["raised", "cleared"] | None, Query()] = None,
        after_id: Annotated[int, Query(ge=0, le=MAX_SEQ, description="events with id > this")]
        = 0,
        limit: Limit = 500) -> schemas.DriftEventPage:
    rows = service.store.drift_events(gateway, asset, kind, after_id, limit)
    next_after = rows[-1]["id"] if len(rows) == limit else None
    return schemas.DriftEventPage(items=[drift_event_out(r) for r in rows],
                                  next_after_id=next_after)
