"""Input drift: per asset, how far its recent inputs are from the model's training data
(per feature PSI and state, checked by the scorer: cloud_service/drift.py), and the events
raised when an asset crossed the drift threshold and cleared when it came back."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query

from cloud_service import schemas
from cloud_service.api.deps import ID, MAX_SEQ, NOT_FOUND, AssetId, GatewayId, Limit, ServiceDep
from cloud_service.store import StoredDrift, StoredDriftEvent

router = APIRouter(tags=["drift"])


def asset_drift_out(row: StoredDrift) -> schemas.AssetDrift:
    detail = json.loads(row["detail"])
    return schemas.AssetDrift(
        gateway=row["gateway"], asset=row["asset"], state=row["state"], score=row["score"],
        reason=detail.get("reason"), ticks=row["ticks"], last_seq=row["last_seq"],
        checked_at=row["checked_at"], model_version=row["model_version"],
        window=detail.get("window"), thresholds=detail.get("settings"),
        regime_ticks=detail.get("regime_ticks", []),
        out_of_regime=detail.get("out_of_regime", 0),
        features=[schemas.FeatureDrift(**f) for f in detail.get("features", [])])


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
    row = service.store.asset_drift(gateway, asset)
    if row is not None:
        return asset_drift_out(row)
    manifest = service.manifest
    if manifest is None:
        why = "no model is loaded"
    elif manifest.training_stats is None:
        why = (f"model {manifest.version} carries no training statistics (retrain it with "
               "this converter to get them)")
    elif service.scorer is None or service.scorer.drift is None:
        why = "drift checks are off (drift.enabled)"
    else:
        why = "not checked yet"
    return schemas.AssetDrift(gateway=gateway, asset=asset, state="unavailable", reason=why)


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
