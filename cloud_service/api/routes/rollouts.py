"""Rollouts: announce a registered model to all gateways, a list, or a percentage; pause,
resume and roll back; each targeted gateway's step, from its own reports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request

from cloud_service import schemas
from cloud_service.api.deps import (
    INVALID,
    NOT_FOUND,
    NOT_JSON,
    UNAUTHORIZED,
    Authorized,
    Responses,
    ServiceDep,
)
from cloud_service.rollouts import RolloutError
from cloud_service.service import Service

router = APIRouter(prefix="/rollouts", tags=["rollouts"])
RolloutId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,64}$", description="rollout id")]
ROLLOUT_ERRORS: Responses = {**UNAUTHORIZED, **NOT_FOUND, 409: {"model": schemas.Problem},
                              503: {"model": schemas.Problem}}


def _base_url(service: Service, request: Request) -> str:
    """Where gateways fetch bundles from: the configured public URL, else this request's."""
    return service.cfg.public_url or str(request.base_url)


def _call(service: Service, request: Request, action: Callable[..., dict],
          *args: Any) -> schemas.Rollout:
    """Run a rollout step; its refusals become the HTTP status they name."""
    if request.method == "POST" and not service.consumer.connected.is_set():
        raise HTTPException(503, "not connected to the MQTT broker: announcements cannot be "
                                 "published now; try again when /readyz is green")
    try:
        return schemas.Rollout.model_validate(action(*args))
    except RolloutError as exc:
        raise HTTPException(exc.status, str(exc)) from None


@router.post("", status_code=201, dependencies=Authorized,
             responses={**ROLLOUT_ERRORS, **NOT_JSON, **INVALID},
             summary="Roll a registered model out to all gateways, a list, or a percentage")
def create_rollout(service: ServiceDep, request: Request,
                   body: schemas.RolloutRequest) -> schemas.Rollout:
    return _call(service, request, service.rollouts.create, body.version, body.gateways,
                 body.percent, _base_url(service, request), body.action)


@router.get("", summary="Rollouts with their per-gateway steps")
def read_rollouts(service: ServiceDep) -> list[schemas.Rollout]:
    return [schemas.Rollout.model_validate(r) for r in service.rollouts.list()]


@router.get("/{rollout_id}", responses=NOT_FOUND,
            summary="One rollout: each targeted gateway's step, from its own reports")
def read_rollout(service: ServiceDep, request: Request,
                 rollout_id: RolloutId) -> schemas.Rollout:
    return _call(service, request, service.rollouts.view, rollout_id)


@router.post("/{rollout_id}/pause", dependencies=Authorized, responses=ROLLOUT_ERRORS,
             summary="Withdraw the announcement from gateways that have not started")
def pause_rollout(service: ServiceDep, request: Request,
                  rollout_id: RolloutId) -> schemas.Rollout:
    return _call(service, request, service.rollouts.pause, rollout_id)


@router.post("/{rollout_id}/resume", dependencies=Authorized, responses=ROLLOUT_ERRORS,
             summary="Announce again to the gateways a pause held back")
def resume_rollout(service: ServiceDep, request: Request,
                   rollout_id: RolloutId) -> schemas.Rollout:
    return _call(service, request, service.rollouts.resume, rollout_id,
                 _base_url(service, request))


@router.post("/{rollout_id}/rollback", dependencies=Authorized, responses=ROLLOUT_ERRORS,
             summary="Send gateways that started back to their previous version")
def rollback_rollout(service: ServiceDep, request: Request,
                     rollout_id: RolloutId) -> schemas.Rollout:
    return _call(service, request, service.rollouts.rollback, rollout_id,
                 _base_url(service, request))
