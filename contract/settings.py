"""Config files shared by every process: one YAML file, every field overridable from the
environment, errors that name the key path, the reason, the bad value and where it came from.

An environment variable with the config's prefix that names no field (`PDM_AGENT_BROKR__HOST`)
is refused with the nearest valid name: pydantic-settings would ignore it silently, and the
setting the operator meant would quietly keep its default.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

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
    prefix = str(cls.model_config.get("env_prefix") or "")
    delimiter = str(cls.model_config.get("env_nested_delimiter") or "__")
    if prefix:
        check_environment(cls, prefix, delimiter, os.environ)
    try:
        return cls(**data)
    except ValidationError as exc:
        env = {k.upper(): v for k, v in os.environ.items()} if prefix else {}
        raise ConfigError(describe(exc, where, hints or {}, prefix, delimiter, env)) from None


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models a field's annotation can hold directly (X, X | None, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _models_in(arg)


def environment_names(model: type[BaseModel], prefix: str, delimiter: str = "__") -> set[str]:
    """Every environment variable name that sets a field of `model` (upper case): a nested
    section can be set whole (as JSON) or field by field."""
    names = set()
    for field_name, info in model.model_fields.items():
        name = f"{prefix}{field_name}".upper()
        names.add(name)
        for sub in _models_in(info.annotation):
            names |= environment_names(sub, name + delimiter, delimiter)
    return names


def check_environment(model: type[BaseModel], prefix: str, delimiter: str,
                      environ: Mapping[str, str]) -> None:
    """ConfigError naming every variable with the prefix that sets no field."""
    valid = environment_names(model, prefix, delimiter)
    unknown = sorted(k for k in environ if k.upper().startswith(prefix.upper())
                     and k.upper() not in valid)
    if not unknown:
        return
    lines = ["invalid config (environment):"]
    for name in unknown:
        near = difflib.get_close_matches(name.upper(), sorted(valid), n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]}?" if near else f" (no field is named so; the " \
            f"variables start with {prefix} and join nested keys with {delimiter})"
        lines.append(f"  {name}: unknown environment variable{hint}")
    raise ConfigError("\n".join(lines))


_SECRET_WORDS = ("password", "token", "secret", "private")


def _shown(key: str, value: Any) -> str:
    """A bad value as the error shows it: secrets never, long values shortened."""
    if any(word in key.lower() for word in _SECRET_WORDS):
        return "'**********'"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _env_source(loc: tuple, prefix: str, delimiter: str, env: Mapping[str, str]) -> str | None:
    """The environment variable that supplied the value at `loc`, if one did (the longest
    match: PDM_AGENT_BROKER__PORT before PDM_AGENT_BROKER)."""
    parts = [str(p) for p in loc]
    for n in range(len(parts), 0, -1):
        name = (prefix + delimiter.join(parts[:n])).upper()
        if name in env:
            return name
    return None


def describe(exc: ValidationError, where: str, hints: dict[str, str] | None = None,
             prefix: str = "", delimiter: str = "__",
             env: Mapping[str, str] | None = None) -> str:
    """One line per error: key path, reason, the value given and where it came from."""
    lines = [f"invalid config ({where}):"]
    for e in exc.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing" and hints and key in hints:
            msg = hints[key]
        else:
            msg = e["msg"]
        source = _env_source(e["loc"], prefix, delimiter, env or {}) if prefix else None
        if e["type"] != "missing":
            origin = f"environment variable {source}" if source else where
            msg += f" (got {_shown(key, e.get('input'))}, from {origin})"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)
