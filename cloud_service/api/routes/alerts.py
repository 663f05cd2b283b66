"""Cloud alerts: the transitions of the cloud's alert machine, oldest first, and their
acknowledgement by an operator (who, when, and a note)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from cloud_service import schemas
from cloud_service.api.deps import (
    ID,
    INVALID,
    MAX_SEQ,
    MAX_TIME,
    NOT_FOUND,
    NOT_JSON,
    UNAUTHORIZED,
    Authorized,
    Limit,
    ServiceDep,
)
from cloud_service.store import AlertAlreadyAcknowledged, AlertNotFound, StoredAlert
from contract.payloads import AlertState

router = APIRouter(prefix="/alerts", tags=["alerts"])
AlertId = Annotated[int, Path(ge=1, le=2**53, description="the alert's id (GET /api/v1/alerts)")]


def alert_out(row: StoredAlert) -> schemas.Alert:
    return schemas.Alert(**row, acknowledged=row["acknowledged_at"] is not None)


@router.get("", responses=INVALID, summary="Cloud alert transitions, oldest first")
def read_alerts(
        service: ServiceDep,
        state: Annotated[AlertState | None, Query(description="the state moved to")] = None,
        gateway: Annotated[str | None, Query(pattern=ID)] = None,
        asset: Annotated[str | None, Query(pattern=ID)] = None,
        since: Annotated[float | None, Query(ge=-MAX_TIME, le=MAX_TIME,
                                             description="published at >= (epoch s)")] = None,
        acknowledged: Annotated[bool | None, Query(
            description="true: acknowledged ones only; false: those nobody acknowledged")]
        = None,
        after_id: Annotated[int, Query(ge=0, le=MAX_SEQ, description="alerts with id > this")]
        = 0,
        limit: Limit = 500) -> schemas.AlertPage:
    rows = service.store.alerts(gateway, asset, state.value if state else None, since,
                                after_id, limit, acknowledged=acknowledged)
    next_after = rows[-1]["id"] if len(rows) == limit else None
    return schemas.AlertPage(items=[alert_out(row) for row in rows], next_after_id=next_after)


@router.post("/{alert_id}/acknowledge", dependencies=Authorized,
             responses={**UNAUTHORIZED, **NOT_FOUND, **NOT_JSON, **INVALID,
                        409: {"model": schemas.Problem,
                              "description": "already acknowledged (the detail names by whom)"}},
             summary="Acknowledge an alert: who did, with a note; stored with the time")
def acknowledge_alert(service: ServiceDep, alert_id: AlertId,
                      body: schemas.AcknowledgeRequest) -> schemas.Alert:
    try:
        row = service.store.acknowledge_alert(alert_id, body.by, body.note, time.time())
    except AlertNotFound:
        raise HTTPException(404, f"no alert {alert_id}; GET /api/v1/alerts lists them") from None
    except AlertAlreadyAcknowledged as exc:
        first = exc.alert
        raise HTTPException(409, f"alert {alert_id} was already acknowledged by "
                                 f"{first['acknowledged_by']!r} at "
                                 f"{_when(first['acknowledged_at'])}") from None
    return alert_out(row)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "an unknown time"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
