"""Dead letters: payloads ingest refused, with the reason (admin: the api_token only, since
they hold whatever a device sent)."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from cloud_service import schemas
from cloud_service.api.deps import INVALID, MAX_SEQ, UNAUTHORIZED, Authorized, Limit, ServiceDep
from cloud_service.deadletters import REASONS
from cloud_service.store import DeadLetterRow

router = APIRouter(prefix="/dead-letters", tags=["admin"])


def dead_letter_out(row: DeadLetterRow) -> schemas.DeadLetter:
    return schemas.DeadLetter(
        **{k: v for k, v in row.items() if k != "payload"},
        payload_base64=base64.b64encode(row["payload"] or b"").decode())


@router.get("", dependencies=Authorized, responses={**UNAUTHORIZED, **INVALID},
            summary="Refused payloads with the reason (admin)")
def read_dead_letters(
        service: ServiceDep,
        reason: Annotated[str | None, Query(
            description=f"one of {', '.join(REASONS)}",
            json_schema_extra={"enum": list(REASONS)})] = None,
        after_id: Annotated[int, Query(ge=0, le=MAX_SEQ, description="rows with id > this")]
        = 0,
        limit: Limit = 100) -> schemas.DeadLetterPage:
    if reason is not None and reason not in REASONS:
        raise HTTPException(422, f"reason {reason!r} is not one of {', '.join(REASONS)}")
    rows = service.store.dead_letters(reason, after_id, limit)
    next_after = rows[-1]["id"] if len(rows) == limit else None
    return schemas.DeadLetterPage(items=[dead_letter_out(row) for row in rows],
                                  next_after_id=next_after)
