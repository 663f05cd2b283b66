"""Config files shared by every process: one YAML file, every field overridable from the
environment, errors that name the key path and the reason."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, each key and the reason."""


class Section(BaseModel):
    """A nested part of a config: an unknown key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class TlsConfig(Section):
    enabled: bool = False
    ca_file: Path | None = Field(None, description="CA bundle; the system CAs when not given")
    cert_file: Path | None = Field(None, description="client certificate for mutual TLS")
    key_file: Path | None = None

    @field_validator("key_file")
    @classmethod
    def _pair(cls, v, info):
        if (v is None) != (info.data.get("cert_file") is None):
            raise ValueError("cert_file and key_file must be given together")
        return v


class FileSettings(BaseSettings):
    """Settings whose values come from a YAML file (passed as init kwargs) and the environment,
    the environment winning."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):
        return (env_settings, init_settings)

    def masked(self) -> dict:
        """The effective config as plain data, every secret shown as '**********'."""
        return self.model_dump(mode="json")  # SecretStr dumps masked


_S = TypeVar("_S", bound=FileSettings)


def load_settings(cls: type[_S], path: str | os.PathLike | None, overrides: dict,
                  hints: dict[str, str] | None = None) -> _S:
    """Read the YAML file, apply the environment, validate. `hints` replace pydantic's message
    for a missing key (for example where to set a secret)."""
    data: dict = {}
    where = "environment"
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a mapping of keys to values")
    data.update(overrides)
    try:
        return cls(**data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, where, hints or {})) from None


def describe(exc: ValidationError, where: str, hints: dict[str, str] | None = None) -> str:
    lines = [f"invalid config ({where}):"]
    for e in exc.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing" and hints and key in hints:
            msg = hints[key]
        else:
            msg = e["msg"]
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)
