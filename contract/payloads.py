"""Payload schemas shared by edge and cloud (pydantic v2).

Alerts, states and statuses are small JSON documents a person reads in `mosquitto_sub`; the
uplink batch carries float32 matrices and goes over the wire in the binary codec of
`contract.codec`.
"""

from __future__ import annotations

import math
import numbers
from enum import Enum
from typing import Annotated, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from contract.errors import ContractError
from contract.topics import check_id
from contract.versions import OrderedVersion

Id = Annotated[str, AfterValidator(lambda v: check_id(v))]
MAX_TICKS_PER_BATCH = 10_000
# Seqs stay below 2^53 so every consumer (float64, JSON, JavaScript, the API's filters) holds
# them exactly, the last seq of a batch included.
MAX_SEQ = 2**53
MAX_FEATURES = 256
MAX_FEATURE_NAME = 64
# Tick times are epoch seconds (or, from a CSV replay, cycle counts): a negative time or one
# past 2100 is a clock or unit fault (milliseconds sent as seconds), not data.
TIME_MIN, TIME_MAX = 0.0, 4_102_444_800.0


def _integer(v: object) -> int:
    # Lax pydantic reads True as 1 and 3.0 as 3; a seq must be a real integer.
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"must be an integer, not {type(v).__name__}")
    return int(v)


Seq = Annotated[int, BeforeValidator(_integer), Field(ge=0, lt=MAX_SEQ)]


class AlertState(str, Enum):
    NORMAL = "NORMAL"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"

    @property
    def level(self) -> int:
        return _LEVELS[self]


_LEVELS = {AlertState.NORMAL: 0, AlertState.WARNING: 1, AlertState.CRITICAL: 2}


class _Json(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite(v: float | None) -> float | None:
    if v is not None and not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


Finite = Annotated[float, AfterValidator(_finite)]


class AlertEvent(_Json):
    """One transition of an asset's alert state, published on `.../alert` or `.../cloud-alert`.

    `kind` "verdict", published on `.../verdict` only: the cloud's answer to a window the edge
    escalated (`seq` is the window's last tick); `probability` and `rul` are the full model's,
    and the states are the cloud's current state for the asset (equal when the verdict moved
    nothing). `basis`, on edge alerts: whose scores decided the transition ("cloud" when the
    edge adopted the cloud's verdict)."""

    schema_version: Literal[1] = 1
    kind: Literal["transition", "verdict"] = "transition"
    source: Literal["edge", "cloud"]
    basis: Literal["edge", "cloud"] | None = None
    gateway: Id
    asset: Id
    old_state: AlertState
    new_state: AlertState
    probability: Finite
    rul: Finite | None = None
    thresholds: dict[str, Finite]
    model_version: str = Field(max_length=64)
    seq: Seq
    tick_time: Finite
    published_at: Finite
    latency_ms: Finite | None = None


class AssetState(_Json):
    """The current state of one asset, retained on `.../state` so late viewers see it at once."""

    schema_version: Literal[1] = 1
    gateway: Id
    asset: Id
    state: AlertState
    probability: Finite
    rul: Finite | None = None
    model_version: str = Field(max_length=64)
    seq: Seq
    tick_time: Finite
    since: Finite


class GatewayStatus(_Json):
    """Retained on `.../status`; the last will sets `online` to false."""

    schema_version: Literal[1] = 1
    gateway: Id
    online: StrictBool
    time: Finite
    model_version: str | None = Field(default=None, max_length=64)
    agent_version: str | None = Field(default=None, max_length=64)


class ModelAnnouncement(_Json):
    """Retained on `.../model`: which bundle a gateway should run (or roll back to).

    Signed by the cloud (`contract.ota`): `signature` is Ed25519 by the key `key_id` over the
    canonical JSON of every other field, so the action, the URL and the version are the
    cloud's, the gateway it names is the only one that takes it, and `issued_at`/`expires_at`
    let a gateway refuse a stale or replayed one."""

    schema_version: Literal[1] = 1
    action: Literal["install", "rollback", "shadow"] = "install"
    gateway: Id
    version: OrderedVersion
    url: str = Field(min_length=1, max_length=2048)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(gt=0)
    rollout_id: str | None = Field(default=None, max_length=64)
    issued_at: Finite = Field(gt=0)
    expires_at: Finite = Field(gt=0)
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    signature: str = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _lifetime(self) -> ModelAnnouncement:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        return self


class UpdateReport(_Json):
    """The agent's progress on a model update, on `.../update`."""

    schema_version: Literal[1] = 1
    gateway: Id
    version: str = Field(max_length=64)
    step: Literal["downloading", "verified", "active", "failed", "rolled-back", "shadow"]
    reason: str | None = Field(default=None, max_length=1000)
    rollout_id: str | None = Field(default=None, max_length=64)
    time: Finite


class UplinkBatch(BaseModel):
    """Consecutive ticks of one asset, with the edge scores, as sent to the cloud.

    `probability` and `rul` hold the edge model's scores of the window ending at each tick
    (NaN where the window was not yet full). Tick `i` has sequence number `first_seq + i`.
    `shadow_*`: the scores of a model the gateway runs in shadow (never alerting), when any.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    gateway: Id
    asset: Id
    first_seq: Seq
    timestamps: np.ndarray
    features: tuple[str, ...]
    values: np.ndarray
    probability: np.ndarray
    rul: np.ndarray
    model_version: str = Field(max_length=64)
    escalated: StrictBool = False
    shadow_version: str | None = Field(default=None, min_length=1, max_length=64)
    shadow_probability: np.ndarray | None = None
    shadow_rul: np.ndarray | None = None

    @field_validator("timestamps", mode="before")
    @classmethod
    def _timestamps(cls, v: object) -> np.ndarray:
        return _vector(v, np.float64, "timestamps")

    @field_validator("probability", "rul", "shadow_probability", "shadow_rul", mode="before")
    @classmethod
    def _scores(cls, v: object, info) -> np.ndarray | None:
        if v is None and info.field_name.startswith("shadow"):
            return None
        return _vector(v, np.float32, info.field_name, allow_nan=True)

    @field_validator("values", mode="before")
    @classmethod
    def _values(cls, v: object) -> np.ndarray:
        try:
            arr = np.asarray(v, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"values is not a numeric matrix ({exc})") from None
        if arr.ndim != 2:
            raise ValueError(f"values must be a 2-D matrix, got {arr.ndim} dimension(s)")
        if not np.isfinite(arr).all():
            raise ValueError("values contains NaN or infinity")
        return arr

    @field_validator("features")
    @classmethod
    def _features(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("features is empty")
        if len(v) > MAX_FEATURES:
            raise ValueError(f"features has {len(v)} names, at most {MAX_FEATURES} allowed")
        for name in v:
            if not 1 <= len(name) <= MAX_FEATURE_NAME:
                raise ValueError(f"feature name {name[:MAX_FEATURE_NAME]!r} is {len(name)} "
                                 f"characters long, 1..{MAX_FEATURE_NAME} allowed")
        if len(set(v)) != len(v):
            raise ValueError("features has duplicate names")
        return v

    @model_validator(mode="after")
    def _shapes(self) -> UplinkBatch:
        n = len(self.timestamps)
        if not 1 <= n <= MAX_TICKS_PER_BATCH:
            raise ValueError(f"a batch holds 1..{MAX_TICKS_PER_BATCH} ticks, got {n}")
        if self.values.shape != (n, len(self.features)):
            raise ValueError(
                f"values has shape {self.values.shape}, expected ({n}, {len(self.features)}) "
                "for the timestamps and features given"
            )
        shadow = (self.shadow_version, self.shadow_probability, self.shadow_rul)
        if any(x is None for x in shadow) and any(x is not None for x in shadow):
            raise ValueError("shadow_version, shadow_probability and shadow_rul come together "
                             "or not at all")
        names = ("probability", "rul") + (("shadow_probability", "shadow_rul")
                                          if self.shadow_version else ())
        for name in names:
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, expected {n}")
        _check_semantics(self, names)
        return self

    @property
    def seqs(self) -> range:
        return range(self.first_seq, self.first_seq + len(self.timestamps))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UplinkBatch):
            return NotImplemented
        plain = ("schema_version", "gateway", "asset", "first_seq", "features", "model_version",
                 "escalated", "shadow_version")
        arrays = ("timestamps", "values", "probability", "rul")
        shadow = ("shadow_probability", "shadow_rul") if self.shadow_version else ()
        return all(getattr(self, f) == getattr(other, f) for f in plain) and all(
            np.array_equal(getattr(self, f), getattr(other, f), equal_nan=True)
            for f in arrays + shadow)

    __hash__ = None  # type: ignore[assignment]


def _check_semantics(batch: UplinkBatch, scores: tuple[str, ...]) -> None:
    """What the numbers mean, once the shapes hold: the decoder cannot tell a spoofed or broken
    batch from a real one by its form alone."""
    last = batch.first_seq + len(batch.timestamps) - 1
    if last >= MAX_SEQ:
        raise ValueError(f"the batch's last seq {last} reaches 2^53 (first_seq {batch.first_seq}"
                         f" + {len(batch.timestamps)} ticks)")
    t = batch.timestamps
    outside = (t < TIME_MIN) | (t > TIME_MAX)
    if outside.any():
        raise ValueError(f"timestamps has values outside the plausible range [{TIME_MIN:.0f}, "
                         f"{TIME_MAX:.0f}] epoch seconds, e.g. {float(t[outside][0])!r}")
    back = np.flatnonzero(np.diff(t) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise ValueError(f"timestamps go backwards at tick {i} ({float(t[i])!r} after "
                         f"{float(t[i - 1])!r})")
    for name in scores:
        v = getattr(batch, name)
        known = v[~np.isnan(v)]  # NaN: no score (the window was not full yet)
        if name.endswith("probability"):
            if ((known < 0) | (known > 1)).any():
                raise ValueError(f"{name} has values outside [0, 1]")
        elif (known < 0).any():
            raise ValueError(f"{name} (remaining useful life) has negative values")


def _vector(v: object, dtype, name: str, allow_nan: bool = False) -> np.ndarray:
    try:
        arr = np.asarray(v, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not a numeric vector ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a vector, got {arr.ndim} dimension(s)")
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name} contains {'infinity' if allow_nan else 'NaN or infinity'}")
    return arr


def to_contract_error(exc: Exception, what: str) -> ContractError:
    """Turn a pydantic ValidationError into one ContractError naming the fields at fault."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for e in errors():
            loc = ".".join(str(p) for p in e.get("loc", ())) or what
            parts.append(f"{loc}: {e.get('msg')}")
        return ContractError(f"invalid {what}: " + "; ".join(parts))
    return ContractError(f"invalid {what}: {exc}")
