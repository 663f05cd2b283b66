"""The store: every tick, prediction, alert, dead letter, model and rollout the service knows.

One interface (`base.py`, split by caller), two backends picked by `store.url`: SQLite
(`sqlite.py`, one file, the embedded default for one host) and PostgreSQL (`postgres.py`,
shared by many replicas). Ticks and predictions are keyed by (gateway, asset, seq) and written
with "on conflict do nothing", so a redelivered batch changes nothing. Both schemas are
versioned: an older database is migrated when the service starts, a newer one is refused.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_service.store.base import (
    PARTITION_SECONDS,
    AlertAlreadyAcknowledged,
    AlertNotFound,
    AlertStore,
    DeliveryQueue,
    FleetReader,
    IngestStore,
    ModelConflict,
    ModelStore,
    RolloutStore,
    ScoringStore,
    Store,
    StoreError,
    StoreUnavailable,
    StoreUrl,
    parse_store_url,
)
from cloud_service.store.rows import (
    AlertRow,
    AssetKey,
    AssetRow,
    AssetScore,
    ClaimedDelivery,
    DeadLetterRow,
    DriftCheck,
    DriftEventRow,
    GatewayRow,
    Inserted,
    ModelRow,
    PredictionRow,
    Received,
    ReportUpdate,
    RolloutRow,
    RolloutTargetRow,
    ScoresStored,
    ScoreWrite,
    ShadowRow,
    StatusUpdate,
    StoredAlert,
    StoredDrift,
    StoredDriftEvent,
    StoredPrediction,
    TargetRequest,
    TickRow,
    WebhookDelivery,
    WindowTicks,
)
from cloud_service.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from cloud_service.config import StoreConfig

log = logging.getLogger(__name__)

__all__ = [
    "PARTITION_SECONDS", "AlertAlreadyAcknowledged", "AlertNotFound", "AlertRow", "AlertStore",
    "AssetKey", "AssetRow", "AssetScore", "ClaimedDelivery", "DeadLetterRow", "DeliveryQueue",
    "DriftCheck", "DriftEventRow",
    "FleetReader", "GatewayRow", "IngestStore", "Inserted", "ModelConflict",
    "ModelRow", "ModelStore", "PredictionRow", "Received", "ReportUpdate", "RolloutRow",
    "RolloutStore", "RolloutTargetRow", "ScoresStored", "ScoreWrite", "ScoringStore", "ShadowRow",
    "SqliteStore", "StatusUpdate", "Store", "StoreError", "StoreUnavailable", "StoreUrl",
    "StoredAlert", "StoredDrift", "StoredDriftEvent",
    "StoredPrediction", "TargetRequest", "TickRow", "WebhookDelivery", "WindowTicks", "open_store",
    "parse_store_url",
]


def open_store(cfg: StoreConfig) -> Store:
    """The backend `cfg.url` names, migrated to the latest schema. An unreachable database is
    tried again with backoff for `cfg.connect_timeout` seconds; then StoreError, whose one-line
    message names the host and database (never the password)."""
    url = parse_store_url(cfg.url)
    if url.scheme == "sqlite":
        assert url.path is not None
        return SqliteStore(Path(url.path), cfg.synchronous)
    from cloud_service.store.postgres import PostgresStore

    deadline = time.monotonic() + cfg.connect_timeout
    delay = cfg.retry_min_delay
    while True:
        try:
            return PostgresStore(url, cfg.secret(), pool_size=cfg.pool_size,
                                 connect_timeout=max(1.0, min(10.0, cfg.connect_timeout)),
                                 pool_timeout=cfg.pool_timeout)
        except StoreUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s; trying again in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, cfg.retry_max_delay)
