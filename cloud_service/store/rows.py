"""Typed rows that cross the store's boundary.

Writes and the scorer's reads are dataclasses. The API's reads are TypedDicts: they go
straight into the pydantic response schemas (`schemas.Asset(**row)`), so a dict whose keys are
checked by the type checker is both typed and free to convert.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

from contract.payloads import GatewayStatus, UpdateReport, UplinkBatch

AssetKey = tuple[str, str]


# -- ingest --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Received:
    """One decoded uplink batch and when it arrived."""

    batch: UplinkBatch
    received_at: float


@dataclass(frozen=True)
class StatusUpdate:
    status: GatewayStatus
    received_at: float


@dataclass(frozen=True)
class ReportUpdate:
    """A gateway's progress on a model update (`.../update`)."""

    report: UpdateReport
    received_at: float


@dataclass(frozen=True)
class Inserted:
    """What one uplink batch added: the seq range it covered and how many rows were new."""

    key: AssetKey
    first_seq: int
    last_seq: int
    new_rows: int
    escalated: bool = False


# -- scoring -------------------------------------------------------------------------------

@dataclass
class WindowTicks:
    """Stored ticks of one asset over a seq range, as the scorer needs them."""

    seqs: np.ndarray  # int64, sorted
    times: np.ndarray  # float64
    received_at: np.ndarray  # float64
    feature_sets: np.ndarray  # int64
    values: list[bytes]  # float32 little-endian rows, in their feature set's order
    edge_probability: list[float | None]
    edge_rul: list[float | None]
    edge_model: list[str]


@dataclass(frozen=True)
class PredictionRow:
    gateway: str
    asset: str
    seq: int
    tick_time: float
    probability: float | None
    rul: float | None
    edge_probability: float | None
    edge_rul: float | None
    diff: float | None
    rul_diff: float | None
    model_version: str
    edge_model_version: str | None
    scored_at: float
    error: str | None = None


@dataclass(frozen=True)
class AlertRow:
    gateway: str
    asset: str
    seq: int
    source: str
    old_state: str
    new_state: str
    probability: float
    rul: float | None
    model_version: str
    tick_time: float
    published_at: float


@dataclass(frozen=True)
class AssetScore:
    """The latest cloud judgement of one asset, kept so a restart resumes its alert state."""

    key: AssetKey
    seq: int
    probability: float
    rul: float | None
    state: str
    state_since: float
    model_version: str
    scored_at: float
    pending: str | None = None  # the state the dwell is counting towards, and how far
    pending_count: int = 0


@dataclass(frozen=True)
class WebhookDelivery:
    """One alert to send to one webhook, queued in the transaction that stores the alert.
    `delivery_id` is derived from the alert and the webhook, so queueing it again is a no-op."""

    delivery_id: str
    webhook: str
    gateway: str
    asset: str
    event: str  # the AlertEvent as JSON
    created_at: float


@dataclass
class ScoreWrite:
    predictions: list[PredictionRow] = field(default_factory=list)
    alerts: list[AlertRow] = field(default_factory=list)
    assets: list[AssetScore] = field(default_factory=list)
    deliveries: list[WebhookDelivery] = field(default_factory=list)


def written_assets(write: ScoreWrite) -> set[AssetKey]:
    """Every asset a score write touches (the owner fence checks each)."""
    return ({(p.gateway, p.asset) for p in write.predictions}
            | {(a.gateway, a.asset) for a in write.alerts} | {a.key for a in write.assets}
            | {(d.gateway, d.asset) for d in write.deliveries})


def without_assets(write: ScoreWrite, keys: set[AssetKey]) -> ScoreWrite:
    """The same scores less those of `keys` (assets another replica owns now)."""
    return ScoreWrite(
        predictions=[p for p in write.predictions if (p.gateway, p.asset) not in keys],
        alerts=[a for a in write.alerts if (a.gateway, a.asset) not in keys],
        assets=[a for a in write.assets if a.key not in keys],
        deliveries=[d for d in write.deliveries if (d.gateway, d.asset) not in keys])


@dataclass(frozen=True)
class DriftCheck:
    """The latest drift judgement of one asset (contract/drift.py); `detail` is the report as
    JSON (per feature PSI and state, ticks per regime, why it is unavailable)."""

    gateway: str
    asset: str
    state: str
    score: float | None
    ticks: int
    last_seq: int | None
    checked_at: float
    model_version: str
    detail: str

    @property
    def key(self) -> AssetKey:
        return (self.gateway, self.asset)


@dataclass(frozen=True)
class DriftEventRow:
    """An asset crossed the drift threshold (`raised`) or came back under it (`cleared`)."""

    gateway: str
    asset: str
    kind: str
    score: float | None
    features: str  # JSON list of the drifting features
    model_version: str
    at: float


@dataclass(frozen=True)
class ScoresStored:
    """What a fenced score write did: assets refused (another replica owns them now) and
    predictions that were already stored (a window scored twice; never expected)."""

    refused: set[AssetKey]
    duplicates: int


# -- notifications -------------------------------------------------------------------------

@dataclass(frozen=True)
class ClaimedDelivery:
    """A queued delivery this replica holds until `finish_delivery` or `retry_delivery` (or
    until its claim lapses, when another replica may take it)."""

    id: int
    delivery_id: str
    webhook: str
    event: str
    attempts: int  # made before this one
    created_at: float


# -- API reads (one key per stored column) -------------------------------------------------

class GatewayRow(TypedDict):
    gateway: str
    online: int | None
    status_time: float | None
    first_seen: float | None
    last_seen: float | None
    model_version: str | None
    agent_version: str | None
    assets: int


class AssetRow(TypedDict):
    gateway: str
    asset: str
    first_seen: float | None
    last_seen: float | None
    last_seq: int | None
    ticks: int
    edge_seq: int | None
    edge_probability: float | None
    edge_rul: float | None
    edge_model_version: str | None
    cloud_seq: int | None
    cloud_probability: float | None
    cloud_rul: float | None
    cloud_state: str | None
    cloud_state_since: float | None
    cloud_model_version: str | None
    scored_at: float | None


class TickRow(TypedDict):
    seq: int
    time: float
    edge_probability: float | None
    edge_rul: float | None
    model_version: str | None
    received_at: float | None
    values: dict[str, float]


class StoredPrediction(TypedDict):
    gateway: str
    asset: str
    seq: int
    tick_time: float | None
    probability: float | None
    rul: float | None
    edge_probability: float | None
    edge_rul: float | None
    diff: float | None
    rul_diff: float | None
    model_version: str | None
    edge_model_version: str | None
    scored_at: float | None
    error: str | None


class StoredAlert(TypedDict):
    id: int
    gateway: str
    asset: str
    seq: int
    source: str
    old_state: str
    new_state: str
    probability: float | None
    rul: float | None
    model_version: str | None
    tick_time: float | None
    published_at: float
    acknowledged_by: str | None
    acknowledged_at: float | None
    ack_note: str | None


class StoredDrift(TypedDict):
    gateway: str
    asset: str
    state: str
    score: float | None
    ticks: int
    last_seq: int | None
    checked_at: float
    model_version: str | None
    detail: str  # JSON


class StoredDriftEvent(TypedDict):
    id: int
    gateway: str
    asset: str
    kind: str
    score: float | None
    features: str  # JSON list
    model_version: str | None
    at: float


class DeadLetterRow(TypedDict):
    id: int
    received_at: float
    topic: str
    gateway: str | None
    reason: str
    detail: str
    size: int
    payload: bytes | None


class ModelRow(TypedDict):
    version: str
    created: str
    registered_at: float
    source: str
    sha256: str
    size: int
    signature: str
    path: str
    tar_path: str
    window: int
    features: str  # JSON list
    manifest: str  # JSON


class RolloutRow(TypedDict):
    id: str
    version: str
    action: str
    state: str
    created_at: float
    updated_at: float
    percent: float | None
    requested: str  # JSON


class RolloutTargetRow(TypedDict):
    rollout_id: str
    gateway: str
    from_version: str | None
    step: str
    reason: str | None
    updated_at: float | None
    report_time: float | None


class TargetRequest(TypedDict):
    """One gateway a new rollout targets."""

    gateway: str
    from_version: str | None
    step: str


class ShadowRow(TypedDict):
    gateway: str
    asset: str
    windows: int
    first_seq: int
    last_seq: int
    mean_abs_diff_active: float
    agreement_active: float
    cloud_scored: int
    mean_abs_diff_cloud: float | None
    agreement_cloud: float | None
    active_agreement_cloud: float | None
    rul_rmse_cloud: float | None
    active_rul_rmse_cloud: float | None
    active_versions: str
