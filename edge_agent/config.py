"""The agent's configuration: one YAML file, validated by pydantic, overridable from the
environment (`PDM_AGENT_<FIELD>`, nested fields joined by `__`, e.g.
`PDM_AGENT_BROKER__HOST=10.0.0.5`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, Field, SecretStr, field_validator, model_validator

from contract.manifest import Thresholds
from contract.settings import ConfigError as ConfigError  # re-exported for callers
from contract.settings import FileSettings, Section, TlsConfig, load_settings
from contract.topics import check_id


class BrokerConfig(Section):
    transport: Literal["mqtt", "aws-iot"] = "mqtt"
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    tls: TlsConfig = TlsConfig()
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = Field(None, description="defaults to the gateway id plus a suffix")
    keepalive: int = Field(30, ge=5, le=3600)


class CmapssSource(Section):
    type: Literal["cmapss"]
    file: Path
    units: list[int] | Literal["all"] = "all"
    rate: float = Field(1.0, ge=0,
                        description="ticks per second per asset; 0 = as fast as possible")
    asset_prefix: str = "engine-"
    loop: bool = Field(False, description="start each unit again from its first cycle when it "
                                          "ends (a demo that runs on); the sequence goes on")


class CsvSource(Section):
    type: Literal["csv"]
    file: Path
    asset_column: str = "asset"
    time_column: str = "time"
    rate: float = Field(0.0, ge=0)


class MqttSource(Section):
    type: Literal["mqtt"]


ModbusDataType = Literal["int16", "uint16", "int32", "uint32", "float32", "int64", "uint64",
                         "float64"]


class ModbusRegister(Section):
    """Where one feature lives in a PLC; its value is `raw * scale + offset`."""

    address: int = Field(ge=0, le=65535, description="first register, 0-based as on the wire")
    register_type: Literal["holding", "input"] = "holding"
    data_type: ModbusDataType = "uint16"
    scale: float = 1.0
    offset: float = 0.0


def _asset_id(v: str) -> str:
    try:
        return check_id(v, "asset")
    except ValueError as exc:  # ContractError is a ValueError: pydantic reports it by key
        raise ValueError(str(exc)) from None


AssetId = Annotated[str, AfterValidator(_asset_id)]


class ModbusAsset(Section):
    asset: AssetId
    unit_id: int = Field(1, ge=0, le=255, description="the Modbus unit (slave) id of the asset")


class ModbusSource(Section):
    """Polls a Modbus TCP server (a PLC or a gateway to RTU devices): one reading per asset
    per poll, the same register map read from each asset's unit id."""

    type: Literal["modbus"]
    host: str
    port: int = Field(502, ge=1, le=65535)
    poll_interval: float = Field(1.0, gt=0, description="seconds between two polls")
    timeout: float = Field(2.0, gt=0, description="seconds to wait for one response")
    word_order: Literal["big", "little"] = Field(
        "big", description="order of the 16-bit words of 32/64-bit values")
    registers: dict[str, ModbusRegister] = Field(
        min_length=1, description="feature name -> register")
    assets: list[ModbusAsset] = Field(min_length=1)
    max_backoff: float = Field(30.0, gt=0, description="longest pause between reconnections")


class OpcUaAsset(Section):
    asset: AssetId
    nodes: dict[str, str] = Field(
        min_length=1, description="feature name -> node id (e.g. ns=2;s=Pump1.Pressure)")


class OpcUaSource(Section):
    """Reads OPC UA variables, by subscription (the server pushes changes) or by polling;
    either way one reading per asset per `interval`, with the latest value of every node."""

    type: Literal["opcua"]
    url: str = Field(pattern=r"^opc\.tcp://", description="opc.tcp://host:port/path")
    mode: Literal["subscription", "polling"] = "subscription"
    interval: float = Field(1.0, gt=0, description="seconds between readings (and the "
                                                   "subscription's publishing interval)")
    timeout: float = Field(4.0, gt=0, description="seconds to wait for the server")
    security_policy: Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep",
                             "Aes256_Sha256_RsaPss"] = "None"
    security_mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    certificate: Path | None = Field(None, description="this client's certificate (DER or PEM)")
    private_key: Path | None = None
    server_certificate: Path | None = Field(
        None, description="the server's certificate, pinned; default: the one it presents")
    username: str | None = None
    password: SecretStr | None = None
    assets: list[OpcUaAsset] = Field(min_length=1)
    max_backoff: float = Field(30.0, gt=0, description="longest pause between reconnections")

    @model_validator(mode="after")
    def _security(self) -> OpcUaSource:
        if self.security_policy != "None" and not (self.certificate and self.private_key):
            raise ValueError(f"security_policy {self.security_policy} needs certificate and "
                             "private_key")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key must be given together")
        return self


Source = Annotated[CmapssSource | CsvSource | MqttSource | ModbusSource | OpcUaSource,
                   Field(discriminator="type")]


class BundleConfig(Section):
    path: Path = Path("models/default")
    trusted_keys: list[Path] = Field(
        default_factory=lambda: [Path("models/default_signing_key.pub")])
    state_dir: Path | None = Field(
        None, description="where downloaded bundles are kept; default: next to the outbox")
    revoked_keys: list[str] = Field(
        default_factory=list, description="keys refused even when trusted: 16-hex-digit "
                                          "fingerprints or paths of PEM public keys")
    announcement_keys: list[Path] = Field(
        default_factory=list, description="keys that may sign model announcements (the cloud's); "
                                          "default: the trusted_keys")
    download_token: SecretStr | None = Field(
        None, description="bearer token for bundle URLs; sent only to model_server")
    model_server: str | None = Field(
        None, pattern=r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?$",
        description="origin (scheme://host[:port]) bundles are downloaded from; other origins "
                    "are refused")
    allow_file_urls: bool = Field(False, description="accept file:// bundle URLs (tests only)")
    max_clock_skew: float = Field(
        300.0, ge=0, description="seconds an announcement's issue time may be ahead of ours")
    max_download_bytes: int = Field(64 * 1024 * 1024, gt=0)

    @model_validator(mode="after")
    def _token_needs_server(self) -> BundleConfig:
        if self.download_token is not None and self.model_server is None:
            raise ValueError("download_token needs model_server: the token is sent only to "
                             "that origin")
        return self


class OutboxConfig(Section):
    path: Path = Path("var/outbox.db")
    max_bytes: int = Field(200 * 1024 * 1024, ge=64 * 1024, description="disk budget")
    batch_max_ticks: int = Field(200, ge=1, le=10_000)
    batch_max_age: float = Field(1.0, ge=0, description="seconds a tick may wait for a batch")
    replay_window: float = Field(
        30.0, ge=0, description="seconds acknowledged ticks are kept and re-sent after a "
                                "reconnect (a restarting broker can lose acknowledged messages)")


class EscalationConfig(Section):
    enabled: bool = Field(True, description="send windows the edge is unsure about to the cloud "
                                            "at once, for the full model's verdict")
    band: float = Field(0.1, ge=0, le=0.5, description="escalate when the probability is within "
                                                       "this distance of the decision threshold")
    heads_disagree: bool = Field(True, description="also escalate when the failure head and the "
                                                   "RUL head disagree")
    verdict_deadline: float = Field(
        5.0, gt=0, description="seconds a verdict may take to count; later ones are counted late")
    adopt_cloud_verdict: bool = Field(
        False, description="decide alerts on escalated windows with the cloud's verdict when it "
                           "comes within verdict_deadline (later windows of the asset wait for "
                           "it); on the edge's own score when it does not")


class LogConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_lines: bool = False


class AgentConfig(FileSettings):
    model_config = ConfigDict(extra="forbid")
    env_prefix: ClassVar[str] = "PDM_AGENT_"

    gateway_id: str = Field(description="this gateway's id in every topic")
    broker: BrokerConfig = BrokerConfig()
    uplink: BrokerConfig | None = Field(None, description="the cloud's broker; default: broker")
    sources: list[Source] = Field(default_factory=list)
    bundle: BundleConfig = BundleConfig()
    thresholds: Thresholds | None = Field(None, description="default: the bundle's thresholds")
    outbox: OutboxConfig = OutboxConfig()
    escalation: EscalationConfig = EscalationConfig()
    metrics_port: int | None = Field(None, ge=0, le=65535)
    log: LogConfig = LogConfig()

    @field_validator("gateway_id")
    @classmethod
    def _gateway_id(cls, v: str) -> str:
        try:
            return check_id(v, "gateway_id")
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    @property
    def uplink_broker(self) -> BrokerConfig:
        return self.uplink or self.broker


def load_config(path: str | os.PathLike | None = None, **overrides) -> AgentConfig:
    """Read, merge with the environment, and validate; errors name the key path and reason."""
    return load_settings(AgentConfig, path, overrides)
