"""The service's configuration: one YAML file, validated by pydantic, overridable from the
environment (`PDM_CLOUD_<FIELD>`, nested fields joined by `__`, e.g.
`PDM_CLOUD_BROKER__HOST=mqtt.internal` or `PDM_CLOUD_API_TOKEN=...`)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from cloud_service.drift import DriftOptions
from contract.bundle import load_private_key
from contract.codec import DEFAULT_MAX_PAYLOAD
from contract.drift import DriftSettings
from contract.payloads import AlertState
from contract.settings import ConfigError as ConfigError  # re-exported for callers
from contract.settings import FileSettings, Section, TlsConfig, load_settings
from contract.topics import check_id

ENV_PREFIX = "PDM_CLOUD_"


class BrokerConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    tls: TlsConfig = TlsConfig()
    username: str | None = None
    password: SecretStr | None = None
    keepalive: int = Field(30, ge=5, le=3600)
    session_expiry: int = Field(
        7 * 24 * 3600, ge=60, le=2**32 - 1,
        description="seconds the broker keeps our session (and queues uplink for us) while "
                    "we are away")
    reconnect_min_delay: float = Field(1, gt=0)
    reconnect_max_delay: float = Field(30, gt=0)


class StoreConfig(Section):
    url: str = Field(
        "sqlite:///var/cloud.db",
        description="sqlite:///relative/path.db, sqlite:////absolute/path.db or "
                    "postgresql://user@host:5432/database (no password in it)")
    path: Path | None = Field(
        None, description="deprecated: a SQLite file; same as url: sqlite:///<path>")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="SQLite only. FULL: a committed (and so acknowledged) batch "
                            "survives power loss; NORMAL: only process crashes")
    password: SecretStr | None = Field(
        None, description="PostgreSQL password (set PDM_CLOUD_STORE__PASSWORD)")
    password_file: Path | None = Field(
        None, description="PostgreSQL password read from this file (a mounted secret)")
    pool_size: int = Field(
        8, ge=2, le=200, description="PostgreSQL connections at most (ingest, scoring and "
                                     "the API each take their own)")
    pool_timeout: float = Field(
        10, gt=0, le=600, description="seconds a store call waits for a PostgreSQL connection "
                                      "before it fails (and its caller retries)")
    connect_timeout: float = Field(
        30, ge=0, le=3600, description="seconds to keep trying an unreachable database at "
                                       "start before exiting")
    retry_min_delay: float = Field(0.5, gt=0, le=60)
    retry_max_delay: float = Field(5, gt=0, le=600)
    retention_days: float | None = Field(
        None, gt=0, description="ticks and predictions older than this (tick time) are "
                                "removed; none: keep everything")
    retention_interval: float = Field(
        3600, ge=1, description="seconds between retention passes")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        from cloud_service.store.base import StoreError, parse_store_url

        try:
            parse_store_url(v)
        except StoreError as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _path_alias(self) -> StoreConfig:
        if self.path is not None:
            if "url" in self.model_fields_set and self.url != f"sqlite:///{self.path}":
                raise ValueError("give store.url or the deprecated store.path, not both")
            self.url = f"sqlite:///{self.path}"
            self.path = None
        return self

    def secret(self) -> str | None:
        """The PostgreSQL password: the setting (or its environment variable), else the
        file's first line."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is None:
            return None
        from cloud_service.store.base import StoreError

        try:
            lines = self.password_file.read_text().splitlines()
        except OSError as exc:
            raise StoreError(f"cannot read store.password_file {self.password_file}: "
                             f"{exc.strerror}") from None
        return lines[0] if lines else ""


class BundleConfig(Section):
    path: Path = Path("models/default")
    trusted_keys: list[Path] = Field(
        default_factory=lambda: [Path("models/default_signing_key.pub")])
    wait: bool = Field(
        False, description="start even when the bundle is unusable, serving not ready "
                           "(/readyz false; ticks stored) until a good bundle is configured; "
                           "by default such a start is refused with exit code 4")


class RegistryConfig(Section):
    path: Path = Field(Path("var/bundles"), description="where uploaded bundles are kept")
    max_upload_bytes: int = Field(64 * 1024 * 1024, gt=0)


class RolloutsConfig(Section):
    signing_key: Path | None = Field(
        None, description="Ed25519 private key (PEM) that signs model announcements; its public "
                          "half goes into the gateways' bundle.trusted_keys (or "
                          "announcement_keys). Without it no rollout can start")
    announcement_ttl: float = Field(
        7 * 24 * 3600, gt=60, le=365 * 24 * 3600,
        description="seconds an announcement stays valid; an offline gateway that comes back "
                    "later refuses it and needs a new announcement (resume or a new rollout)")

    @field_validator("signing_key")
    @classmethod
    def _readable_key(cls, v: Path | None) -> Path | None:
        if v is not None:
            load_private_key(v)  # a missing or wrong key is a config error, not a failed rollout
        return v


class ScoringConfig(Section):
    batch_max: int = Field(512, ge=1, le=65536, description="windows per model call at most")
    max_delay: float = Field(
        0.05, ge=0, le=60, description="seconds a window may wait for its batch to fill")
    lease_seconds: float = Field(
        10, ge=1, le=300, description="a replica that stops renewing its lease for this long "
                                      "loses its assets to the others")
    gap_wait: float = Field(
        60, ge=0, le=86_400, description="seconds an asset's windows wait for a missing tick "
                                         "before scoring goes on past it")
    scan_interval: float = Field(
        0.25, gt=0, le=60, description="seconds between looks for ticks other replicas stored")


class DriftConfig(Section):
    """Input drift checks against the model's training statistics (docs/cloud.md)."""

    enabled: bool = Field(True, description="check each asset's recent inputs for drift")
    window: int = Field(200, ge=10, le=100_000, description="recent ticks compared per asset")
    min_ticks: int = Field(50, ge=1, description="fewer recent ticks than this: not judged")
    watch: float = Field(0.1, gt=0, description="PSI from which a feature is 'watch'")
    drift: float = Field(0.25, gt=0, description="PSI from which a feature is 'drift'")
    feature_share: float = Field(
        0.5, gt=0, le=1, description="share of the features that must drift for the asset "
                                     "to drift (its score is that feature's PSI)")
    interval: float = Field(30, ge=0, le=86_400,
                            description="seconds before an asset is checked again")
    batch: int = Field(64, ge=1, le=10_000,
                       description="assets checked at a time, between scoring batches")

    @model_validator(mode="after")
    def _ordered(self) -> DriftConfig:
        if self.watch > self.drift:
            raise ValueError("watch must be <= drift")
        return self

    def options(self) -> DriftOptions | None:
        """What the scorer needs; None when drift checks are off."""
        if not self.enabled:
            return None
        return DriftOptions(DriftSettings(watch=self.watch, drift=self.drift,
                                          min_ticks=self.min_ticks,
                                          feature_share=self.feature_share),
                            window=self.window, interval=self.interval, batch=self.batch)


class IngestConfig(Section):
    max_payload_bytes: int = Field(DEFAULT_MAX_PAYLOAD, ge=1024)
    commit_max_messages: int = Field(
        200, ge=1, le=10_000, description="messages written (then acknowledged) per transaction")
    queue_max_messages: int = Field(
        2000, ge=1, description="received but uncommitted messages held at most")


class DeadLetterConfig(Section):
    keep_payload_bytes: int = Field(
        4096, ge=0, description="bytes of each refused payload kept for inspection")


class HttpConfig(Section):
    host: str = Field("127.0.0.1", description="loopback unless told otherwise; a container "
                                               "binds 0.0.0.0 (deploy/docker/cloud.yaml)")
    port: int = Field(8000, ge=0, le=65535)


class ApiConfig(Section):
    read_token: SecretStr | None = Field(
        None, min_length=16,
        description="when set, the read routes under /api/v1 need this bearer token (or "
                    "api_token); /healthz, /readyz, /metrics and the docs stay open "
                    "(PDM_CLOUD_API__READ_TOKEN)")


class WebhookConfig(Section):
    """One receiver of alert notifications (an incident tool, a chat channel)."""

    name: str = Field(description="names the webhook in metrics, logs and the delivery queue "
                                  "(the URL, often a secret itself, appears in none of them)")
    url: SecretStr = Field(description="http(s) address the alerts are POSTed to")
    format: Literal["generic", "slack"] = Field(
        "generic", description="generic: the alert as JSON; slack: a Slack-compatible "
                               "message ({text, blocks}) for an incoming webhook")
    severities: list[AlertState] = Field(
        default_factory=lambda: [AlertState.WARNING, AlertState.CRITICAL], min_length=1,
        description="alert states (the state an asset moves to) this webhook receives; add "
                    "NORMAL to hear when an asset recovers")
    secret: SecretStr | None = Field(
        None, min_length=16, description="when set, each body is signed with HMAC-SHA256 in "
                                         "X-PDM-Signature: sha256=<hex>")
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="extra request headers (e.g. Authorization)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            return check_id(v, "webhook name")
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr) -> SecretStr:
        parts = urlsplit(v.get_secret_value())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return v

    @field_validator("severities")
    @classmethod
    def _unique(cls, v: list[AlertState]) -> list[AlertState]:
        return list(dict.fromkeys(v))


class NotificationsConfig(Section):
    """Alert webhooks. Deliveries are queued in the store with the alert (so a receiver that
    is down, or a restart, loses none) and sent by a worker, retried with backoff."""

    webhooks: list[WebhookConfig] = Field(default_factory=list)
    timeout: float = Field(5, gt=0, le=120, description="seconds one POST may take")
    retry_min_delay: float = Field(
        2, gt=0, le=3600, description="seconds before the first retry; each next one waits "
                                      "twice as long (with jitter) up to retry_max_delay")
    retry_max_delay: float = Field(300, gt=0, le=86_400)
    give_up_after: float = Field(
        86_400, gt=0, description="seconds after the alert that a delivery still failing is "
                                  "given up (counted, kept in the store as failed)")
    poll_interval: float = Field(
        1, gt=0, le=60, description="seconds between looks for deliveries due (new alerts "
                                    "of this replica wake the worker at once)")
    batch: int = Field(16, ge=1, le=1000, description="deliveries claimed at a time")

    @field_validator("webhooks")
    @classmethod
    def _distinct(cls, v: list[WebhookConfig]) -> list[WebhookConfig]:
        names = [w.name for w in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"webhook names must differ: {', '.join(twice)} given twice")
        return v

    @model_validator(mode="after")
    def _delays(self) -> NotificationsConfig:
        if self.retry_max_delay < self.retry_min_delay:
            raise ValueError("retry_max_delay must be at least retry_min_delay")
        return self


class LogConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def default_client_id() -> str:
    """Stable per host (a Kubernetes pod name, a container hostname) so a restart resumes the
    same broker session."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    return f"pdm-cloud-{host}"[:64]


class CloudConfig(FileSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__",
                                      extra="forbid")

    broker: BrokerConfig = BrokerConfig()
    client_id: str = Field(default_factory=default_client_id,
                           description="MQTT client id; keep it stable across restarts")
    share_group: str = Field("cloud", description="replicas in one group split the uplink")
    store: StoreConfig = StoreConfig()
    bundle: BundleConfig = BundleConfig()
    registry: RegistryConfig = RegistryConfig()
    rollouts: RolloutsConfig = RolloutsConfig()
    api_token: SecretStr = Field(
        description="bearer token for write and admin routes, also good for reads (set "
                    "PDM_CLOUD_API_TOKEN)",
        min_length=16)
    api: ApiConfig = ApiConfig()
    scoring: ScoringConfig = ScoringConfig()
    drift: DriftConfig = DriftConfig()
    ingest: IngestConfig = IngestConfig()
    dead_letters: DeadLetterConfig = DeadLetterConfig()
    http: HttpConfig = HttpConfig()
    public_url: str | None = Field(
        None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="the API's address as gateways reach it, for the bundle URLs in model "
                    "announcements; default: the address the rollout request came to")
    notifications: NotificationsConfig = NotificationsConfig()
    log: LogConfig = LogConfig()

    @field_validator("share_group")
    @classmethod
    def _group(cls, v: str) -> str:
        try:
            return check_id(v, "share_group")
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str) -> str:
        if not 1 <= len(v) <= 64:
            raise ValueError("must be 1-64 characters")
        return v


def load_config(path: str | os.PathLike | None = None, **overrides) -> CloudConfig:
    """Read the YAML file, apply the environment, validate; errors name the key path and the
    reason."""
    return load_settings(CloudConfig, path, overrides, hints={
        "api_token": f"required; set it in the file or as {ENV_PREFIX}API_TOKEN"})
