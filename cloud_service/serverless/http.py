"""HTTP scoring function (API Gateway HTTP API v2 and Lambda function URL events).

Request body: `{"windows": [window, ...], "features": [name, ...]}` where a window is W rows of
raw sensor values (the container's units); `features` names the columns and defaults to the
manifest's `columns` (its features, then the operational settings a regime model needs).
Response: per window its probability, RUL, decision, the count of its ticks out of every
operating regime, and the model version. Bad input is a 400 whose body says why; nothing else
is a 400.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from typing import Any

import numpy as np

from cloud_service.serverless import ServerlessError
from cloud_service.serverless.model import get_model
from contract.manifest import Manifest
from contract.preprocess import OutOfRegimeLog, normalise

log = logging.getLogger(__name__)
MAX_WINDOWS = 256  # a request stays far under Lambda's 6 MB payload and 15 min limits
REGIME_LOG = OutOfRegimeLog()  # at most a line a minute per warm instance


class BadRequest(ServerlessError):
    """The request cannot be scored; the message is the 400's reason."""


def parse_windows(body: Any, manifest: Manifest) -> np.ndarray:
    """Raw windows (n, W, C) in the manifest's column order, from a decoded JSON body (pure)."""
    if not isinstance(body, dict) or "windows" not in body:
        raise BadRequest('body must be a JSON object with "windows": [[[value, ...], ...], ...]')
    unknown = set(body) - {"windows", "features"}
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    wanted = manifest.columns
    names = body.get("features", wanted)
    if (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names)):
        raise BadRequest('"features" must be a list of distinct feature names')
    missing = [f for f in wanted if f not in names]
    if missing:
        raise BadRequest(f"features lack what the model needs: {', '.join(missing)}")
    windows = body["windows"]
    if not isinstance(windows, list) or not windows:
        raise BadRequest('"windows" must be a non-empty list')
    if len(windows) > MAX_WINDOWS:
        raise BadRequest(f"{len(windows)} windows; at most {MAX_WINDOWS} per request")
    w = manifest.window
    try:
        x = np.array(windows, dtype=np.float32)
    except (ValueError, TypeError):
        raise BadRequest(f"each window must be {w} rows of {len(names)} numbers") from None
    if x.ndim != 3 or x.shape[1:] != (w, len(names)):
        raise BadRequest(f"each window must be {w} rows of {len(names)} numbers "
                         f"(got shape {list(x.shape[1:])})")
    if not np.all(np.isfinite(x)):
        raise BadRequest("windows hold a non-finite value (NaN or infinity)")
    return x[:, :, [names.index(f) for f in wanted]]


def score(x: np.ndarray) -> dict:
    """Scores of raw windows in manifest column order: what the function answers."""
    loaded = get_model()
    manifest = loaded.manifest
    inputs, far = normalise(x, manifest)
    flagged = far.sum(axis=1)
    if flagged.any():
        line = REGIME_LOG.note(int(flagged.sum()), f"window {int(np.argmax(flagged > 0))} of "
                                                   "a request")
        if line:
            log.warning("%s", line)
    prob, rul = loaded.model(inputs)
    cut = manifest.thresholds.decision
    return {"model_version": manifest.version, "predictions": [
        {"probability": float(p), "rul": float(r), "decision": "fault" if p >= cut else "normal",
         "out_of_regime": int(n)}
        for p, r, n in zip(prob, rul, flagged, strict=True)]}


def _response(status: int, body: dict) -> dict:
    return {"statusCode": status, "headers": {"content-type": "application/json"},
            "body": json.dumps(body)}


if os.environ.get("AWS_LAMBDA_RUNTIME_API"):
    # Under a runtime client: load (and verify) during the init phase, which Lambda runs at
    # full CPU; a refused bundle is an init error, never a request answered.
    get_model()


def handler(event: dict, context: object = None) -> dict:
    """Entry point (`cloud_service.serverless.http.handler`)."""
    try:
        raw = event.get("body") or ""
        if event.get("isBase64Encoded"):
            try:
                raw = base64.b64decode(raw, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise BadRequest("body is not valid base64 UTF-8") from None
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BadRequest(f"body is not JSON: {exc}") from None
        manifest = get_model().manifest
        return _response(200, score(parse_windows(body, manifest)))
    except BadRequest as exc:
        return _response(400, {"error": str(exc)})
