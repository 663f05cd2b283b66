"""Assets: the latest cloud and edge scores and cloud alert state of each, and per asset its
stored ticks and cloud predictions (paged by seq)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from cloud_service import schemas
from cloud_service.api.deps import (
    ID,
    INVALID,
    MAX_SEQ,
    MAX_TIME,
    NOT_FOUND,
    AssetId,
    GatewayId,
    Limit,
    ServiceDep,
)
from cloud_service.store import AssetRow, StoredDrift
from contract.payloads import AlertState

router = APIRouter(prefix="/assets", tags=["fleet"])


def asset_out(row: AssetRow, drift: StoredDrift | None = None) -> schemas.Asset:
    return schemas.Asset(
        gateway=row["gateway"], asset=row["asset"], first_seen=row["first_seen"],
        last_seen=row["last_seen"], last_seq=row["last_seq"], ticks=row["ticks"] or 0,
        state=row["cloud_state"], state_since=row["cloud_state_since"],
        probability=row["cloud_probability"], rul=row["cloud_rul"], scored_seq=row["cloud_seq"],
        model_version=row["cloud_model_version"], edge_probability=row["edge_probability"],
        edge_rul=row["edge_rul"], edge_seq=row["edge_seq"] if row["edge_seq"] != -1 else None,
        edge_model_version=row["edge_model_version"],
        drift_state=drift["state"] if drift else None,
        drift_score=drift["score"] if drift else None)


@router.get("", responses=INVALID,
            summary="Assets with their latest cloud and edge scores and cloud alert state")
def read_assets(
        service: ServiceDep,
        gateway: Annotated[str | None, Query(pattern=ID, description="this gateway's only")]
        = None,
        state: Annotated[AlertState | None, Query(
            description="in this cloud alert state only (an asset the cloud has not scored yet "
                        "has none)")] = None) -> list[schemas.Asset]:
    rows = service.store.assets(gateway, state.value if state else None)
    drift = {(d["gateway"], d["asset"]): d for d in service.store.asset_drifts(gateway)}
    return [asset_out(row, drift.get((row["gateway"], row["asset"]))) for row in rows]


@router.get("/{gateway}/{asset}", responses=NOT_FOUND, summary="One asset")
def read_asset(service: ServiceDep, gateway: GatewayId, asset: AssetId) -> schemas.Asset:
    row = service.store.asset(gateway, asset)
    if row is None:
        raise HTTPException(404, f"no asset {asset!r} on gateway {gateway!r} has sent ticks")
    return asset_out(row, service.store.asset_drift(gateway, asset))


@router.get("/{gateway}/{asset}/ticks",
            summary="Stored ticks of one asset, by seq (and optionally time) range")
def read_ticks(
        service: ServiceDep, gateway: GatewayId, asset: AssetId,
        after_seq: Annotated[int, Query(ge=-1, le=MAX_SEQ, description="ticks with seq > this")]
        = -1,
        to_seq: Annotated[int | None, Query(ge=0, le=MAX_SEQ, description="up to this seq")]
        = None,
        since: Annotated[float | None, Query(ge=-MAX_TIME, le=MAX_TIME,
                                             description="tick time >= (epoch s)")] = None,
        until: Annotated[float | None, Query(ge=-MAX_TIME, le=MAX_TIME,
                                             description="tick time < (epoch s)")] = None,
        limit: Limit = 500) -> schemas.TickPage:
    rows = service.store.ticks(gateway, asset, after_seq, to_seq, since, until, limit)
    next_after = rows[-1]["seq"] if len(rows) == limit else None
    return schemas.TickPage(items=[schemas.Tick(**row) for row in rows],
                            next_after_seq=next_after)


@router.get("/{gateway}/{asset}/predictions",
            summary="Cloud predictions of one asset next to the edge's score of the same window")
def read_predictions(
        service: ServiceDep, gateway: GatewayId, asset: AssetId,
        after_seq: Annotated[int, Query(ge=-1, le=MAX_SEQ,
                                        description="windows ending at seq > this")] = -1,
        to_seq: Annotated[int | None, Query(ge=0, le=MAX_SEQ, description="up to this seq")]
        = None,
        limit: Limit = 500) -> schemas.PredictionPage:
    rows = service.store.predictions(gateway, asset, after_seq, to_seq, limit)
    next_after = rows[-1]["seq"] if len(rows) == limit else None
    items = [schemas.Prediction(**{k: v for k, v in row.items() if k not in ("gateway", "asset")})
             for row in rows]
    return schemas.PredictionPage(items=items, next_after_seq=next_after)
