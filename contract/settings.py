"""Config files shared by every process: one YAML file, every field overridable from the
environment, errors that name the key path, the reason, the bad value and where it came from.

An environment variable with the config's prefix that names no field (`PDM_AGENT_BROKR__HOST`)
is refused with the nearest valid name: pydantic-settings would ignore it silently, and the
setting the operator meant would quietly keep its default.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


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


class FileSettings(BaseModel):
    """Settings whose values come from a YAML file and the environment, the environment
    winning; `load_settings` merges the two. A subclass names its variables' prefix in
    `env_prefix` (or in `model_config`, as pydantic-settings' SettingsConfigDict does).

    The environment is read here rather than by pydantic-settings, whose import (with asyncio)
    costs the gateway agent ~7 MB of its 100 MB: same rules (case-insensitive names, nested keys
    joined by `env_nested_delimiter`, JSON for lists, mappings and whole sections)."""

    env_prefix: ClassVar[str] = ""
    env_nested_delimiter: ClassVar[str] = "__"

    @classmethod
    def environment_prefix(cls) -> tuple[str, str]:
        """(prefix, nested delimiter) of this config's environment variables."""
        prefix = cls.env_prefix or str(cls.model_config.get("env_prefix") or "")
        delimiter = str(cls.model_config.get("env_nested_delimiter") or cls.env_nested_delimiter)
        return prefix, delimiter

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
    prefix, delimiter = cls.environment_prefix()
    if prefix:
        check_environment(cls, prefix, delimiter, os.environ)
        data = merge(data, environment_values(cls, prefix, delimiter, os.environ))
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


def _is_structured(annotation: Any) -> bool:
    """True for a field whose environment value is JSON (a section, list, mapping, ...)."""
    if isinstance(annotation, type):
        return issubclass(annotation, (BaseModel, list, dict, tuple, set, frozenset))
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return any(_is_structured(arg) for arg in typing.get_args(annotation))
    return origin in (list, dict, tuple, set, frozenset)


def environment_values(model: type[BaseModel], prefix: str, delimiter: str,
                       environ: Mapping[str, str]) -> dict:
    """The values the environment sets, as nested data (`PREFIX_BROKER__PORT=1884` ->
    {"broker": {"port": "1884"}}; pydantic converts the strings). Names that set no field
    are left to `check_environment`."""
    values: dict = {}
    for key, raw in sorted(environ.items()):
        if not key.upper().startswith(prefix.upper()):
            continue
        path = key[len(prefix):].lower().split(delimiter)
        target: type[BaseModel] | None = model
        annotation: Any = None
        for part in path:
            fields = target.model_fields if target is not None else {}
            if part not in fields:
                break
            annotation = fields[part].annotation
            target = next(_models_in(annotation), None)
        else:
            value: Any = raw
            if _is_structured(annotation):
                try:
                    value = json.loads(raw)
                except ValueError as exc:
                    raise ConfigError(f"invalid config (environment):\n  {key.upper()}: not "
                                      f"valid JSON ({exc}) (got {_shown(key, raw)})") from None
            node = values  # sorted: a whole section (JSON) comes before its keys
            for part in path[:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            last = path[-1]
            if isinstance(node.get(last), dict) and isinstance(value, dict):
                value = merge(node[last], value)
            node[last] = value
    return values


def merge(base: dict, over: dict) -> dict:
    """`base` with `over` laid on top, mappings merged key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


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


# The password part of a URL (scheme://user:password@host), wherever a URL is given.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^/@\s]*(?=@)")


def _shown(key: str, value: Any) -> str:
    """A bad value as the error shows it: secrets never (nor a password inside a URL), long
    values shortened."""
    if any(word in key.lower() for word in _SECRET_WORDS):
        return "'**********'"
    text = _URL_PASSWORD.sub(r"\g<head>**********", repr(value))
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
