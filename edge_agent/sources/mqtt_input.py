"""Readings that sensors publish as JSON on `pdm/v1/{gateway}/{asset}/raw`.

Payload: `{"time": 1732350000.5, "values": {"sensor_2": 642.1, ...}}`, or the same with the
features at the top level next to `time`.
"""

from __future__ import annotations

import json
import time

from contract import topics
from contract.errors import ContractError
from contract.payloads import MAX_FEATURE_NAME, MAX_FEATURES
from edge_agent.readings import Reading
from edge_agent.sources import Emit, Reject

MAX_RAW_BYTES = 64 * 1024


def parse_raw(topic: str, payload: bytes) -> Reading:
    """A Reading from one raw message; ValueError (with the reason) for anything malformed."""
    try:
        parsed = topics.parse(topic)
    except ContractError as exc:
        raise ValueError(str(exc)) from None
    if len(payload) > MAX_RAW_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_RAW_BYTES}")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"payload is not JSON ({exc})") from None
    if not isinstance(doc, dict) or "time" not in doc:
        raise ValueError("payload must be a JSON object with a 'time' field")
    values = doc.get("values", {k: v for k, v in doc.items() if k != "time"})
    if not isinstance(values, dict):
        raise ValueError("'values' must be an object of feature name to number")
    if len(values) > MAX_FEATURES:
        raise ValueError(f"'values' has {len(values)} features, at most {MAX_FEATURES} allowed")
    for name in values:
        if not 1 <= len(name) <= MAX_FEATURE_NAME:
            raise ValueError(f"feature name {name[:MAX_FEATURE_NAME]!r} is {len(name)} "
                             f"characters long, 1..{MAX_FEATURE_NAME} allowed")
    return Reading(parsed.asset or "", doc["time"], values, time.perf_counter())


def handler(emit: Emit, reject: Reject):
    def on_message(topic: str, payload: bytes) -> None:
        try:
            reading = parse_raw(topic, payload)
        except ValueError as exc:
            reject("bad_payload", f"{topic}: {exc}")
            return
        emit(reading)

    return on_message
