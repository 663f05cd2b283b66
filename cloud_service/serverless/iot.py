"""IoT Core rule function: one uplink batch in, its ticks stored, its complete windows scored.

The rule (docs/serverless.md, deploy/aws/serverless.yaml) forwards
`{"payload": encode(*, 'base64'), "topic": topic(), "received_ms": timestamp()}`. The batch is
decoded exactly as the container's ingest decodes it (`cloud_service.ingest.decode_message`),
stored with the store's ON CONFLICT keys, and the complete windows ending in the batch's seq
range that have no prediction yet are scored and written, again ON CONFLICT DO NOTHING. So a
redelivered event (Lambda retries at least once) stores and scores nothing new.

Replicas own assets through leases; a function does not take leases (it lives for one event).
While any replica holds a live lease, the function only stores: the replicas score every
window, in order, and drive the alert machines. With none, the function scores, writing
predictions only (no alert state, which needs one ordered writer per asset). See
docs/serverless.md for why.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from cloud_service.config import StoreConfig
from cloud_service.deadletters import DeadLetter
from cloud_service.ingest import decode_message
from cloud_service.serverless import ServerlessError
from cloud_service.serverless.model import Loaded, get_model
from cloud_service.store import (
    AssetKey,
    Inserted,
    PredictionRow,
    Received,
    ScoreWrite,
    Store,
    open_store,
)
from cloud_service.windows import (
    FeatureMap,
    assemble_windows,
    complete_window_ends,
    disagreement,
    ticks_needed,
)
from contract.codec import DEFAULT_MAX_PAYLOAD
from contract.preprocess import OutOfRegimeLog

log = logging.getLogger(__name__)
STORE_ENV = "PDM_STORE_URL"
# Out-of-regime ticks are logged at most once a minute per warm instance (Lambda has no
# Prometheus endpoint; the log is where they are seen).
REGIME_LOG = OutOfRegimeLog()
KEEP_BYTES = 4096  # of a refused payload, kept in the dead letter (as the container keeps)


class BadEvent(ServerlessError):
    """The event is not what the IoT rule sends; retrying cannot help."""


@dataclass(frozen=True)
class Outcome:
    stored_ticks: int
    scored: int
    dead_letter: str | None = None
    left_to_replicas: bool = False

    def as_dict(self) -> dict:
        return {"stored_ticks": self.stored_ticks, "scored": self.scored,
                "dead_letter": self.dead_letter, "left_to_replicas": self.left_to_replicas}


_store: Store | None = None
_store_lock = threading.Lock()


def get_store() -> Store:
    global _store
    with _store_lock:
        if _store is None:
            url = os.environ.get(STORE_ENV)
            if not url:
                raise ServerlessError(f"{STORE_ENV} is not set")
            _store = open_store(StoreConfig(url=url))
        return _store


def parse_event(event: object) -> tuple[str, bytes, float]:
    """(topic, payload, received_at) of an IoT rule event (pure). received_at comes from the
    rule's timestamp(), so a redelivered event stores the same rows."""
    if not isinstance(event, dict):
        raise BadEvent("event must be a JSON object")
    topic, payload = event.get("topic"), event.get("payload")
    if not isinstance(topic, str) or not isinstance(payload, str):
        raise BadEvent('event needs "topic" (topic()) and "payload" (encode(*, \'base64\'))')
    try:
        raw = base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise BadEvent('"payload" is not base64') from None
    ms = event.get("received_ms")
    received = float(ms) / 1000 if isinstance(ms, (int, float)) else time.time()
    return topic, raw, received


def score_new_windows(store: Store, loaded: Loaded, inserted: list[Inserted],
                      now: float) -> int:
    """Score the complete windows ending in each batch's seq range that have no prediction."""
    manifest = loaded.manifest
    w = manifest.window
    plan: list[tuple[AssetKey, list[int]]] = []
    for item in inserted:
        lo, hi = ticks_needed(item.first_seq, item.last_seq + w - 1, w)
        ends = complete_window_ends(store.tick_seqs(item.key, lo, hi), w,
                                    item.first_seq, item.last_seq + w - 1)
        if len(ends):
            done = store.predicted_seqs(item.key, int(ends[0]), int(ends[-1]))
            todo = [int(e) for e in ends if int(e) not in done]
            if todo:
                plan.append((item.key, todo))
    if not plan:
        return 0
    ticks = store.windows_ticks([(key, todo[0] - w + 1, todo[-1]) for key, todo in plan])
    maps: dict[int, FeatureMap] = {}
    write = ScoreWrite()
    for key, todo in plan:
        t = ticks[key]
        rows = np.zeros((len(t.seqs), len(manifest.columns)), np.float32)
        usable = np.ones(len(t.seqs), bool)
        for fs in np.unique(t.feature_sets):
            at = np.flatnonzero(t.feature_sets == fs)
            fm = maps.get(int(fs)) or maps.setdefault(
                int(fs), FeatureMap.build(store.feature_set(int(fs)), manifest.columns))
            if fm.index is None:
                usable[at] = False
                continue
            raw = np.frombuffer(b"".join(t.values[i] for i in at), "<f4").reshape(len(at), -1)
            rows[at] = raw[:, fm.index]
        last = np.searchsorted(t.seqs, todo)
        good = [e for e, i in zip(todo, last, strict=True) if usable[i - w + 1:i + 1].all()]
        if not good:
            log.warning("%s/%s: %d window(s) lack features the model needs", *key, len(todo))
            continue
        x, flagged = assemble_windows(t.seqs, rows, good, manifest)
        if flagged.any():
            line = REGIME_LOG.note(int(flagged.sum()), f"{key[0]}/{key[1]} seq "
                                                       f"{good[int(np.argmax(flagged))]}")
            if line:
                log.warning("%s", line)
        prob, rul = loaded.model(x)
        for end, p, r in zip(good, prob, rul, strict=True):
            i = int(np.searchsorted(t.seqs, end))
            ep, er = t.edge_probability[i], t.edge_rul[i]
            write.predictions.append(PredictionRow(
                gateway=key[0], asset=key[1], seq=end, tick_time=float(t.times[i]),
                probability=float(p), rul=float(r), edge_probability=ep, edge_rul=er,
                diff=disagreement(float(p), ep), rul_diff=disagreement(float(r), er),
                model_version=manifest.version, edge_model_version=t.edge_model[i],
                scored_at=now))
    if not write.predictions:
        return 0
    stored = store.write_scores(write)
    return len(write.predictions) - stored.duplicates


def handle(event: object, store: Store, loaded: Loaded) -> Outcome:
    topic, payload, received = parse_event(event)
    decoded = decode_message(topic, payload, DEFAULT_MAX_PAYLOAD, KEEP_BYTES, received)
    if isinstance(decoded, DeadLetter):
        store.write_ingest([], [], [decoded])
        log.warning("refused %s: %s", topic, decoded.detail)
        return Outcome(0, 0, decoded.reason)
    if not isinstance(decoded, Received):
        raise BadEvent(f"topic {topic} is not an uplink; route only uplinks to this function")
    inserted = store.write_ingest([decoded], [], [])
    stored = sum(i.new_rows for i in inserted)
    if store.live_replicas() > 0:
        return Outcome(stored, 0, left_to_replicas=True)
    # Score even when nothing was new: a retry after a failed scoring step finishes it.
    scored = score_new_windows(store, loaded, inserted, time.time())
    return Outcome(stored, scored)


if os.environ.get("AWS_LAMBDA_RUNTIME_API"):
    get_model()  # in the init phase, as the HTTP function does; the store connects lazily


def handler(event: dict, context: object = None) -> dict:
    """Entry point (`cloud_service.serverless.iot.handler`). A store error propagates, so
    Lambda retries the event; a malformed event does not (it would fail the same way)."""
    try:
        return handle(event, get_store(), get_model()).as_dict()
    except BadEvent as exc:
        log.error("bad event: %s", exc)
        return {"error": str(exc)}
