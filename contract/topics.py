"""Topic strings, built and parsed in one place (MQTT and AWS IoT compatible: at most 7 levels)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from contract.errors import ContractError

ROOT = "pdm/v1"
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Per-gateway and per-asset topic kinds, as the last level of the topic.
GATEWAY_KINDS = ("status", "uplink", "model", "escalate", "update")
ASSET_KINDS = ("raw", "alert", "state", "cloud-alert", "verdict")

# Who sends and who reads each kind. The broker ACL (deploy/docker/mosquitto/acl) and the AWS
# IoT policy (deploy/aws/iot-policy.json) grant these and nothing more, each party only under
# its own gateway id for a gateway; tests hold the ACL, the policy and the agent's and the
# viewer's code to this table.
# `cloud-alert` carries the cloud alert machine's state changes only (for people and their
# tools); `verdict` the cloud's answers to escalated windows (for the agent that asked).
GATEWAY_PUBLISHES = ("status", "uplink", "escalate", "update", "alert", "state")
GATEWAY_RETAINS = ("status", "state")  # the last will and the asset states are retained
GATEWAY_SUBSCRIBES = ("model", "verdict", "raw")
CLOUD_SUBSCRIBES = ("uplink", "escalate", "status", "update")
CLOUD_PUBLISHES = ("model", "cloud-alert", "verdict")
# Plant-side kinds: a sensor bridge, viewer or PLC holding the gateway's own identity may read
# and write these on a shared broker (never another gateway's).
PLANT_KINDS = ("raw", "alert", "state")
# What the alert viewer (edge_agent/viewer.py) reads; with a gateway's identity it may read the
# cloud's alerts on that gateway's assets too, but never write them.
VIEWER_SUBSCRIBES = ("state", "alert", "cloud-alert")


def check_id(value: object, what: str = "id") -> str:
    """Return `value` if it is a valid gateway/asset id, else raise ContractError saying why."""
    if not isinstance(value, str):
        raise ContractError(f"{what} must be a string, got {type(value).__name__}")
    if not ID_PATTERN.fullmatch(value):
        if value == "":
            reason = "is empty"
        elif len(value) > 64:
            reason = f"is {len(value)} characters long (at most 64)"
        else:
            bad = sorted({c for c in value if not re.fullmatch(r"[A-Za-z0-9_-]", c)})
            reason = f"contains {''.join(bad)!r} (only letters, digits, '_' and '-' are allowed)"
        raise ContractError(f"{what} {value!r} {reason}")
    return value


def gateway_topic(gateway: str, kind: str) -> str:
    if kind not in GATEWAY_KINDS:
        raise ContractError(f"unknown gateway topic kind {kind!r}; expected one of {GATEWAY_KINDS}")
    return f"{ROOT}/{check_id(gateway, 'gateway')}/{kind}"


def asset_topic(gateway: str, asset: str, kind: str) -> str:
    if kind not in ASSET_KINDS:
        raise ContractError(f"unknown asset topic kind {kind!r}; expected one of {ASSET_KINDS}")
    return f"{ROOT}/{check_id(gateway, 'gateway')}/{check_id(asset, 'asset')}/{kind}"


def status(gateway: str) -> str:
    return gateway_topic(gateway, "status")


def uplink(gateway: str) -> str:
    return gateway_topic(gateway, "uplink")


def escalate(gateway: str) -> str:
    return gateway_topic(gateway, "escalate")


def model(gateway: str) -> str:
    return gateway_topic(gateway, "model")


def update(gateway: str) -> str:
    """The agent's reports on model updates (downloading, verified, active, failed)."""
    return gateway_topic(gateway, "update")


def raw(gateway: str, asset: str) -> str:
    return asset_topic(gateway, asset, "raw")


def alert(gateway: str, asset: str) -> str:
    return asset_topic(gateway, asset, "alert")


def state(gateway: str, asset: str) -> str:
    return asset_topic(gateway, asset, "state")


def cloud_alert(gateway: str, asset: str) -> str:
    """State changes of the cloud's alert machine for the asset (never NORMAL -> NORMAL)."""
    return asset_topic(gateway, asset, "cloud-alert")


def verdict(gateway: str, asset: str) -> str:
    """The cloud's full-model answer to a window the gateway escalated."""
    return asset_topic(gateway, asset, "verdict")


def subscription(kind: str, gateway: str = "+", asset: str | None = None) -> str:
    """A subscription filter: `+` stands for every gateway (and asset, for asset kinds)."""
    if kind in GATEWAY_KINDS:
        return f"{ROOT}/{gateway}/{kind}"
    if kind in ASSET_KINDS:
        return f"{ROOT}/{gateway}/{asset or '+'}/{kind}"
    raise ContractError(f"unknown topic kind {kind!r}")


def shared(group: str, topic_filter: str) -> str:
    """An MQTT 5 shared subscription, so replicas in `group` split the messages."""
    return f"$share/{check_id(group, 'share group')}/{topic_filter}"


@dataclass(frozen=True)
class Topic:
    gateway: str
    kind: str
    asset: str | None = None


def parse(topic: str) -> Topic:
    """Parse one of our topics; anything else raises ContractError."""
    if not topic.startswith(ROOT + "/"):
        raise ContractError(f"topic {topic!r} does not start with {ROOT}/")
    levels = topic[len(ROOT) + 1 :].split("/")
    if len(levels) == 2 and levels[1] in GATEWAY_KINDS:
        return Topic(check_id(levels[0], "gateway"), levels[1])
    if len(levels) == 3 and levels[2] in ASSET_KINDS:
        return Topic(check_id(levels[0], "gateway"), levels[2], check_id(levels[1], "asset"))
    raise ContractError(f"topic {topic!r} is not a known {ROOT} topic")
