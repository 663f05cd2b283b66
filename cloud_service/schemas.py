"""Response bodies of the HTTP API (they make the OpenAPI document at /docs useful)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Health(BaseModel):
    status: Literal["ok"]


class Gateway(BaseModel):
    gateway: str
    online: bool | None = Field(None, description="from the retained status; None: never sent")
    status_time: float | None = None
    first_seen: float | None = None
    last_seen: float | None = Field(None, description="last uplink or status received")
    model_version: str | None = None
    agent_version: str | None = None
    assets: int = 0


class Asset(BaseModel):
    gateway: str
    asset: str
    first_seen: float | None = None
    last_seen: float | None = None
    last_seq: int | None = None
    ticks: int = 0
    state: str | None = Field(None, description="cloud alert state (NORMAL/WARNING/CRITICAL)")
    state_since: float | None = None
    probability: float | None = Field(None, description="cloud failure probability, latest "
                                                        "window")
    rul: float | None = Field(None, description="cloud remaining useful life, latest window")
    scored_seq: int | None = None
    model_version: str | None = None
    edge_probability: float | None = None
    edge_rul: float | None = None
    edge_seq: int | None = None
    edge_model_version: str | None = None
    drift_state: str | None = Field(None, description="input drift: ok, watch, drift or "
                                                      "unavailable; None: not checked yet")
    drift_score: float | None = Field(None, description="the PSI that decides drift_state")


class Tick(BaseModel):
    seq: int
    time: float
    values: dict[str, float]
    edge_probability: float | None = None
    edge_rul: float | None = None
    model_version: str | None = None
    received_at: float | None = None


class TickPage(BaseModel):
    items: list[Tick]
    next_after_seq: int | None = Field(None, description="pass as after_seq for the next page")


class Prediction(BaseModel):
    seq: int
    tick_time: float | None = None
    probability: float | None = None
    rul: float | None = None
    edge_probability: float | None = None
    edge_rul: float | None = None
    diff: float | None = Field(None, description="|cloud - edge| probability")
    rul_diff: float | None = Field(None, description="|cloud - edge| RUL")
    model_version: str | None = None
    edge_model_version: str | None = None
    scored_at: float | None = None
    error: str | None = Field(None, description="why the window could not be scored")
    scored_by: str | None = Field(None, description="the replica that scored the window")


class PredictionPage(BaseModel):
    items: list[Prediction]
    next_after_seq: int | None = None


class Alert(BaseModel):
    id: int
    gateway: str
    asset: str
    seq: int
    source: str
    old_state: str
    new_state: str
    probability: float
    rul: float | None = None
    model_version: str
    tick_time: float
    published_at: float
    acknowledged: bool = False
    acknowledged_by: str | None = Field(None, description="the operator who acknowledged it")
    acknowledged_at: float | None = Field(None, description="when (epoch s, the service's "
                                                            "clock)")
    ack_note: str | None = Field(None, description="the note given with the acknowledgement")


class AcknowledgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str = Field(min_length=1, max_length=64, pattern=r"\S",
                    description="the operator's name (not blank)")
    note: str = Field("", max_length=2000, description="what was done or found")


class AlertPage(BaseModel):
    items: list[Alert]
    next_after_id: int | None = None


DriftStateName = Literal["ok", "watch", "drift", "unavailable"]


class FeatureDrift(BaseModel):
    feature: str
    psi: float = Field(description="population stability index against the training data")
    state: DriftStateName
    regime_psi: list[float | None] = Field(
        description="per operating regime (one entry without regimes); None: no recent tick "
                    "in that regime")


class DriftThresholds(BaseModel):
    watch: float
    drift: float
    min_ticks: int
    feature_share: float


class AssetDrift(BaseModel):
    gateway: str
    asset: str
    state: DriftStateName
    score: float | None = Field(None, description="the PSI that decides the state: the "
                                                  "feature_share quantile of the features' PSI")
    reason: str | None = Field(None, description="why the state is unavailable")
    ticks: int = Field(0, description="recent ticks compared")
    last_seq: int | None = Field(None, description="seq of the newest tick compared")
    checked_at: float | None = None
    model_version: str | None = None
    window: int | None = Field(None, description="recent ticks compared at most")
    thresholds: DriftThresholds | None = None
    regime_ticks: list[int] = Field([], description="recent ticks per operating regime")
    out_of_regime: int = Field(0, description="recent ticks far from every regime")
    features: list[FeatureDrift] = []


class DriftEvent(BaseModel):
    id: int
    gateway: str
    asset: str
    kind: Literal["raised", "cleared"] = Field(
        description="raised: the asset crossed into drift; cleared: it came back under it")
    score: float | None = None
    features: list[str] = Field(description="the features in drift at the time")
    model_version: str | None = None
    at: float


class DriftEventPage(BaseModel):
    items: list[DriftEvent]
    next_after_id: int | None = None


class DeadLetter(BaseModel):
    id: int
    received_at: float
    topic: str
    gateway: str | None = None
    reason: str
    detail: str
    size: int
    payload_base64: str = Field(description="the payload's first bytes (up to the configured "
                                            "keep limit)")


class DeadLetterPage(BaseModel):
    items: list[DeadLetter]
    next_after_id: int | None = None


class Model(BaseModel):
    version: str
    created: str
    registered_at: float
    source: str = Field(description="config (the bundle this service scores with) or upload")
    sha256: str = Field(description="SHA-256 of the bundle tar")
    size: int
    signature: str
    window: int
    features: list[str]
    scoring: bool = Field(False, description="the model this service scores with")
    bundle_url: str


class ShadowAsset(BaseModel):
    gateway: str
    asset: str
    windows: int = Field(description="windows the shadow model scored beside the active one")
    first_seq: int
    last_seq: int
    active_versions: str = Field(description="the active edge model(s) it ran beside")
    mean_abs_diff_active: float = Field(description="mean |shadow p - active edge p|")
    agreement_active: float = Field(description="share of windows with the same decision as "
                                                "the active edge model")
    cloud_scored: int = Field(description="of those windows, how many the cloud has scored")
    mean_abs_diff_cloud: float | None = Field(None, description="mean |shadow p - cloud p|")
    agreement_cloud: float | None = Field(None, description="shadow decisions equal to the "
                                                            "cloud's full model")
    active_agreement_cloud: float | None = Field(
        None, description="the same for the active edge model, for comparison")
    rul_rmse_cloud: float | None = Field(None, description="RMSE of shadow RUL against the "
                                                           "cloud's RUL")
    active_rul_rmse_cloud: float | None = None


class ShadowReport(BaseModel):
    version: str
    decision_threshold: float = Field(description="the shadow model's (its manifest)")
    cloud_decision_threshold: float = Field(description="used for the active edge and cloud "
                                                        "scores")
    windows: int
    agreement_active: float
    agreement_cloud: float | None
    active_agreement_cloud: float | None
    assets: list[ShadowAsset]


class Problem(BaseModel):
    detail: str


class ValidationIssue(BaseModel):
    """One field at fault, as FastAPI reports a request that does not match its schema."""

    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(BaseModel):
    detail: str | list[ValidationIssue] = Field(
        description="a sentence when the service refused the content, a list of the fields at "
                    "fault when the request did not match its schema")


class Ready(BaseModel):
    ready: bool
    reasons: list[str]


class RolloutRequest(BaseModel):
    # The validator below, said in the schema too, so clients and generated tests know it.
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "not": {"required": ["gateways", "percent"],
                "properties": {"gateways": {"type": "array"}, "percent": {"type": "number"}}},
        "description": "gateways and percent are alternatives: give one, or neither for every "
                       "known gateway"})

    version: str = Field(pattern=r"^[A-Za-z0-9._+-]{1,64}$",
                         description="a registered model version (GET /api/v1/models)")
    gateways: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]] | None = Field(
        None, min_length=1, max_length=10_000,
        description="these gateways only; default: every known gateway")
    percent: float | None = Field(
        None, gt=0, le=100, description="a canary: this share of the known gateways (at least "
                                        "one), picked by a hash of the rollout id")
    action: Literal["install", "shadow"] = Field(
        "install", description="install: swap the model in; shadow: run it beside the active "
                               "model without alerting, scores uplinked for comparison "
                               "(GET /api/v1/models/{version}/shadow)")

    @model_validator(mode="after")
    def _one_target(self) -> RolloutRequest:
        if self.gateways is not None and self.percent is not None:
            raise ValueError("give either gateways or percent, not both")
        return self


class RolloutTarget(BaseModel):
    gateway: str
    from_version: str | None = Field(None, description="what it ran when the rollout began")
    step: str = Field(description="announced, paused, cleared, rolling-back, unannounced (the "
                                  "cloud's), or the gateway's report: downloading, verified, "
                                  "active, shadow, failed, rolled-back")
    reason: str | None = Field(None, description="why it failed, as the gateway reported it")
    updated_at: float | None = None
    report_time: float | None = Field(None, description="the gateway's clock at its last report")


class Rollout(BaseModel):
    id: str
    version: str
    action: str
    state: str = Field(description="active, paused or rolled-back")
    created_at: float
    updated_at: float
    percent: float | None = None
    requested: dict
    targets: list[RolloutTarget]
    steps: dict[str, int] = Field(description="how many gateways are at each step")
    complete: bool = Field(description="every targeted gateway reported the version active "
                                       "(shadow, for a shadow rollout)")
