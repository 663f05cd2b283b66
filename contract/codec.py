"""Wire encodings.

JSON for the payloads a person reads (alerts, states, statuses, announcements, reports). The
uplink batch is msgpack with raw little-endian float arrays, compressed with zlib, prefixed by a
one-byte schema version so a decoder can refuse what it does not know before unpacking it.
"""

from __future__ import annotations

import json
import zlib
from typing import TypeVar

import msgpack
import numpy as np
from pydantic import BaseModel, ValidationError

from contract.errors import ContractError
from contract.payloads import UplinkBatch, to_contract_error

DEFAULT_MAX_PAYLOAD = 256 * 1024
UPLINK_VERSION = 1
_M = TypeVar("_M", bound=BaseModel)


def encode_json(message: BaseModel) -> bytes:
    return message.model_dump_json().encode()


def decode_json(payload: bytes, model: type[_M], max_bytes: int = DEFAULT_MAX_PAYLOAD) -> _M:
    name = model.__name__
    if len(payload) > max_bytes:
        raise ContractError(f"{name} payload of {len(payload)} bytes exceeds the {max_bytes} limit")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"{name} payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ContractError(f"{name} payload must be a JSON object")
    version = data.get("schema_version", 1)
    if version != 1:
        raise ContractError(f"{name} has unknown schema version {version!r} (this build reads 1)")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise to_contract_error(exc, name) from None


def encode_uplink(batch: UplinkBatch) -> bytes:
    body = {
        "g": batch.gateway,
        "a": batch.asset,
        "s": batch.first_seq,
        "f": list(batch.features),
        "t": batch.timestamps.astype("<f8").tobytes(),
        "x": batch.values.astype("<f4").tobytes(),
        "p": batch.probability.astype("<f4").tobytes(),
        "r": batch.rul.astype("<f4").tobytes(),
        "m": batch.model_version,
        "e": batch.escalated,
    }
    if batch.shadow_version is not None:
        # UplinkBatch's validator admits the three shadow fields only together.
        assert batch.shadow_probability is not None and batch.shadow_rul is not None
        body["sv"] = batch.shadow_version
        body["sp"] = batch.shadow_probability.astype("<f4").tobytes()
        body["sr"] = batch.shadow_rul.astype("<f4").tobytes()
    return bytes([UPLINK_VERSION]) + zlib.compress(msgpack.packb(body, use_bin_type=True), 6)


def decode_uplink(payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> UplinkBatch:
    """Decode and validate an uplink batch; every failure is a ContractError naming the cause."""
    if not payload:
        raise ContractError("uplink payload is empty")
    if len(payload) > max_bytes:
        raise ContractError(f"uplink payload of {len(payload)} bytes exceeds the {max_bytes} limit")
    if payload[0] != UPLINK_VERSION:
        raise ContractError(
            f"uplink payload has unknown schema version {payload[0]} (this build reads "
            f"{UPLINK_VERSION})"
        )
    inflater = zlib.decompressobj()
    try:
        # Bound the inflated size too: a tiny payload must not expand into gigabytes.
        raw = inflater.decompress(payload[1:], 16 * max_bytes)
    except zlib.error as exc:
        raise ContractError(f"uplink payload is not valid zlib data ({exc})") from None
    if inflater.unconsumed_tail:
        raise ContractError(f"uplink payload inflates beyond {16 * max_bytes} bytes")
    if not inflater.eof:
        raise ContractError("uplink payload is truncated (the compressed stream ends early)")
    if inflater.unused_data:
        raise ContractError("uplink payload has trailing bytes after the compressed stream")
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ContractError(f"uplink payload is not valid msgpack ({exc})") from None
    if not isinstance(body, dict):
        raise ContractError("uplink payload must be a msgpack map")
    missing = [k for k in "gasftxprm" if k not in body]
    if missing:
        raise ContractError(f"uplink payload lacks field(s) {', '.join(missing)}")
    features = body["f"]
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise ContractError("uplink field f (features) must be a list of names")
    arrays = {}
    shadow = ("sp", "sr") if "sv" in body else ()
    for key, dtype in (("t", "<f8"), ("x", "<f4"), ("p", "<f4"), ("r", "<f4"),
                       *((k, "<f4") for k in shadow)):
        blob = body.get(key)
        if not isinstance(blob, bytes) or len(blob) % np.dtype(dtype).itemsize:
            raise ContractError(f"uplink field {key} is not a whole array of {dtype} numbers")
        arrays[key] = np.frombuffer(blob, dtype=dtype)
    n, width = len(arrays["t"]), max(len(features), 1)
    if len(arrays["x"]) != n * len(features):
        raise ContractError(
            f"uplink values hold {len(arrays['x'])} numbers, expected {n} ticks x "
            f"{len(features)} features"
        )
    try:
        return UplinkBatch(
            gateway=body["g"],
            asset=body["a"],
            first_seq=body["s"],
            timestamps=arrays["t"],
            features=tuple(features),
            values=arrays["x"].reshape(n, width) if features else arrays["x"],
            probability=arrays["p"],
            rul=arrays["r"],
            model_version=body["m"],
            escalated=body.get("e", False),  # strict: "no" or 1 is refused, not read as true
            shadow_version=body.get("sv"),
            shadow_probability=arrays.get("sp"),
            shadow_rul=arrays.get("sr"),
        )
    except ValidationError as exc:
        raise to_contract_error(exc, "UplinkBatch") from None


def uplink_as_json(batch: UplinkBatch) -> bytes:
    """The same ticks as naive JSON, one object per tick: the wire-size baseline."""
    rows = []
    for i, seq in enumerate(batch.seqs):
        p, r = float(batch.probability[i]), float(batch.rul[i])
        rows.append({
            "gateway": batch.gateway, "asset": batch.asset, "seq": seq,
            "time": float(batch.timestamps[i]),
            "values": dict(zip(batch.features, map(float, batch.values[i]), strict=True)),
            "probability": None if p != p else p, "rul": None if r != r else r,
            "model_version": batch.model_version,
        })
    return json.dumps(rows).encode()
