"""The store's interface, split by who uses it, its errors, its URL and the migration rule.

Callers depend on the narrowest part they need: ingest on `IngestStore`, the scorer on
`ScoringStore`, the API on `FleetReader` and `AlertStore`, the model registry on `ModelStore`,
rollouts on `RolloutStore`. `Store` is all of them plus what the service itself needs (health,
retention, close). Both backends (`sqlite.py`, `postgres.py`) implement `Store`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from cloud_service.deadletters import DeadLetter
from cloud_service.ownership import Membership, OwnedAsset
from cloud_service.store.rows import (
    AssetKey,
    AssetRow,
    ClaimedDelivery,
    DeadLetterRow,
    DriftCheck,
    DriftEventRow,
    GatewayRow,
    Inserted,
    ModelRow,
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
    WindowTicks,
)

PARTITION_SECONDS = 86_400  # ticks and predictions are kept (and dropped) by day of tick time


class StoreError(Exception):
    """The store cannot be opened, reached or used as asked. Messages name the file, or the
    host and database, never a password."""


class StoreUnavailable(StoreError):
    """The database did not answer, or rolled the transaction back (a deadlock, a lock held
    too long): the same call may well succeed when tried again."""


class ModelConflict(StoreError, ValueError):
    """A model version is already registered with other content."""


class AlertNotFound(StoreError, LookupError):
    """No alert has that id."""


class AlertAlreadyAcknowledged(StoreError):
    """The alert was acknowledged before; `alert` is the stored row, naming who did it."""

    def __init__(self, alert: StoredAlert) -> None:
        super().__init__(f"alert {alert['id']} was already acknowledged by "
                         f"{alert['acknowledged_by']!r}")
        self.alert = alert


@dataclass(frozen=True)
class StoreUrl:
    """A parsed `store.url`: `sqlite:///relative/path`, `sqlite:////absolute/path` or
    `postgresql://user@host:port/database` (the password never comes from the URL)."""

    scheme: str  # "sqlite" or "postgresql"
    path: Path | None = None
    host: str = "localhost"
    port: int = 5432
    user: str | None = None
    database: str = ""
    options: tuple[tuple[str, str], ...] = ()  # libpq parameters from the query string

    def describe(self) -> str:
        """Where the data lives, for messages and logs (no secret in it)."""
        if self.scheme == "sqlite":
            return f"SQLite file {self.path}"
        who = f" as {self.user}" if self.user else ""
        return f"PostgreSQL database {self.database!r} on {self.host}:{self.port}{who}"


def parse_store_url(url: str) -> StoreUrl:
    """Validate `store.url`; the StoreError says what is wrong and what a good one looks like."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc:
            raise StoreError(f"store.url {url!r}: a SQLite URL has no host; write "
                             "sqlite:///relative/path.db or sqlite:////absolute/path.db")
        path = unquote(parts.path)[1:]  # sqlite:///x -> "x", sqlite:////x -> "/x"
        if not path or path.endswith("/"):
            raise StoreError(f"store.url {url!r} names no file; write sqlite:///var/cloud.db")
        return StoreUrl("sqlite", path=Path(path))
    if scheme in ("postgresql", "postgres"):
        if parts.password is not None or "password" in parse_qs(parts.query):
            raise StoreError("store.url must not carry a password: put it in "
                             "store.password_file or PDM_CLOUD_STORE__PASSWORD")
        try:
            port = parts.port or 5432
        except ValueError:
            raise StoreError(f"store.url {url!r}: the port is not a number 1-65535") from None
        database = unquote(parts.path.lstrip("/"))
        if not parts.hostname or not database or "/" in database:
            raise StoreError(f"store.url {url!r} needs a host and a database: "
                             "postgresql://user@host:5432/database")
        options = tuple((k, v[-1]) for k, v in parse_qs(parts.query).items())
        return StoreUrl("postgresql", host=parts.hostname, port=port,
                        user=unquote(parts.username) if parts.username else None,
                        database=database, options=options)
    raise StoreError(f"store.url {url!r}: the scheme must be sqlite or postgresql "
                     "(sqlite:///var/cloud.db, postgresql://user@host:5432/database)")


def check_schema_version(current: int, latest: int, where: str) -> range:
    """The migrations to apply to a database at `current`; a database made by a newer
    version of the service is refused, since this code would misread it."""
    if current > latest:
        raise StoreError(
            f"{where} has schema version {current}, newer than this service knows ({latest}): "
            "run the cloud service version that wrote it (or newer), or restore a backup")
    return range(current + 1, latest + 1)


# -- the interface, by caller ---------------------------------------------------------------

class IngestStore(Protocol):
    def write_ingest(self, batches: list[Received], statuses: list[StatusUpdate],
                     dead: list[DeadLetter],
                     reports: Sequence[ReportUpdate] = ()) -> list[Inserted]:
        """Everything one group of MQTT messages carried, in one transaction; a tick already
        stored (same gateway, asset, seq) is ignored."""
        ...


class ScoringStore(Protocol):
    def tick_seqs(self, key: AssetKey, lo: int, hi: int) -> np.ndarray: ...
    def predicted_seqs(self, key: AssetKey, lo: int, hi: int) -> set[int]: ...
    def window_ticks(self, key: AssetKey, lo: int, hi: int) -> WindowTicks: ...
    def windows_ticks(self, ranges: Sequence[tuple[AssetKey, int, int]]
                      ) -> dict[AssetKey, WindowTicks]: ...
    def feature_set(self, feature_set_id: int) -> tuple[str, ...]: ...
    def write_scores(self, write: ScoreWrite, owner: str | None = None) -> ScoresStored: ...
    # Input drift (cloud_service/drift.py): the latest check per asset and threshold events.
    def write_drift(self, checks: Sequence[DriftCheck], events: Sequence[DriftEventRow],
                    owner: str | None = None) -> set[AssetKey]: ...
    def asset_drifts(self, gateway: str | None = None) -> list[StoredDrift]: ...
    # Ownership (cloud_service/ownership.py): leases, claims and the owned assets' state.
    def heartbeat(self, replica: str, token: str, lease: float) -> Membership: ...
    def claim_assets(self, replica: str, limit: int) -> list[AssetKey]: ...
    def release_assets(self, replica: str, keys: Iterable[AssetKey]) -> None: ...
    def leave(self, replica: str, token: str) -> None: ...
    def live_replicas(self, exclude: str | None = None) -> int: ...
    def owned_assets(self, replica: str,
                     seen_since: float | None = None) -> list[OwnedAsset]: ...
    # The stored alert state of an asset another replica owns.
    def asset(self, gateway: str, asset: str) -> AssetRow | None: ...


class FleetReader(Protocol):
    def gateways(self) -> list[GatewayRow]: ...
    def assets(self, gateway: str | None = None,
               state: str | None = None) -> list[AssetRow]: ...
    def asset(self, gateway: str, asset: str) -> AssetRow | None: ...
    def ticks(self, gateway: str, asset: str, after_seq: int, to_seq: int | None,
              since: float | None, until: float | None, limit: int) -> list[TickRow]: ...
    def predictions(self, gateway: str, asset: str, after_seq: int, to_seq: int | None,
                    limit: int) -> list[StoredPrediction]: ...
    def alerts(self, gateway: str | None, asset: str | None, state: str | None,
               since: float | None, after_id: int, limit: int,
               acknowledged: bool | None = None) -> list[StoredAlert]: ...
    def asset_drift(self, gateway: str, asset: str) -> StoredDrift | None: ...
    def asset_drifts(self, gateway: str | None = None) -> list[StoredDrift]: ...
    def drift_events(self, gateway: str | None, asset: str | None, kind: str | None,
                     after_id: int, limit: int) -> list[StoredDriftEvent]: ...
    def dead_letters(self, reason: str | None, after_id: int,
                     limit: int) -> list[DeadLetterRow]: ...
    def dead_letter_counts(self) -> dict[str, int]: ...
    def shadow_report(self, version: str, shadow_cut: float,
                      cut: float) -> list[ShadowRow]: ...


class AlertStore(Protocol):
    def acknowledge_alert(self, alert_id: int, by: str, note: str,
                          at: float) -> StoredAlert:
        """Mark the alert acknowledged by `by` at `at` with `note`, once: AlertNotFound for an
        unknown id, AlertAlreadyAcknowledged when someone did it before."""
        ...


class ModelStore(Protocol):
    def models(self) -> list[ModelRow]: ...
    def model(self, version: str) -> ModelRow | None: ...
    def register_model(self, record: ModelRow) -> tuple[ModelRow, bool]: ...


class RolloutStore(Protocol):
    def gateways(self) -> list[GatewayRow]: ...
    def model(self, version: str) -> ModelRow | None: ...
    def create_rollout(self, rollout: RolloutRow, targets: list[TargetRequest]) -> None: ...
    def rollouts(self) -> list[RolloutRow]: ...
    def rollout(self, rollout_id: str) -> RolloutRow | None: ...
    def rollout_targets(self, rollout_id: str) -> list[RolloutTargetRow]: ...
    def update_rollout(self, rollout_id: str, state: str,
                       steps: dict[str, tuple[str, str | None]]) -> None: ...


class DeliveryQueue(Protocol):
    """The webhook delivery queue (`notifications.py`). Deliveries enter it with their alert
    (`write_scores`); a claim makes one replica their only sender for a while."""

    def claim_deliveries(self, replica: str, limit: int, hold: float) -> list[ClaimedDelivery]:
        """Up to `limit` deliveries that are due and not claimed by a live claim, held by
        `replica` for `hold` seconds; oldest due first."""
        ...

    def finish_delivery(self, delivery: int, replica: str, delivered: bool,
                        error: str | None = None) -> bool:
        """Delivered, or given up; False if the claim had lapsed to another replica."""
        ...

    def retry_delivery(self, delivery: int, replica: str, delay: float, error: str) -> bool:
        """Count a failed attempt and make the delivery due again in `delay` seconds."""
        ...

    def pending_deliveries(self) -> int:
        """Deliveries not yet delivered nor given up (the queue's depth)."""
        ...


class Store(IngestStore, ScoringStore, FleetReader, AlertStore, ModelStore, RolloutStore,
            DeliveryQueue, Protocol):
    """Everything, for the service that owns the store."""

    where: str  # StoreUrl.describe(): for messages

    def check_writable(self) -> None:
        """Raise unless a write transaction commits now (readiness)."""
        ...

    def drop_before(self, cutoff: float) -> int:
        """Retention: remove ticks and predictions whose tick time is before `cutoff`; the
        number of rows (SQLite) or partitions (PostgreSQL) removed."""
        ...

    def close(self) -> None: ...
