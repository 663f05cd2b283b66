"""The service's configuration: one YAML file, validated by pydantic, overridable from the
environment (`PDM_CLOUD_<FIELD>`, nested fields joined by `__`, e.g.
`PDM_CLOUD_BROKER__HOST=mqtt.internal` or `PDM_CLOUD_API_TOKEN=...`)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from contract.codec import DEFAULT_MAX_PAYLOAD
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
    path: Path = Path("var/cloud.db")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="FULL: a committed (and so acknowledged) batch survives power loss; "
                            "NORMAL: only process crashes")


class BundleConfig(Section):
    path: Path = Path("models/default")
    trusted_keys: list[Path] = Field(
        default_factory=lambda: [Path("models/default_signing_key.pub")])


class RegistryConfig(Section):
    path: Path = Field(Path("var/bundles"), description="where uploaded bundles are kept")
    max_upload_bytes: int = Field(64 * 1024 * 1024, gt=0)


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
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)


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
    api_token: SecretStr = Field(
        description="bearer token for write and admin routes (set PDM_CLOUD_API_TOKEN)",
        min_length=16)
    scoring: ScoringConfig = ScoringConfig()
    ingest: IngestConfig = IngestConfig()
    dead_letters: DeadLetterConfig = DeadLetterConfig()
    http: HttpConfig = HttpConfig()
    public_url: str | None = Field(
        None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="the API's address as gateways reach it, for the bundle URLs in model "
                    "announcements; default: the address the rollout request came to")
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
