"""The cloud service against a real Mosquitto, with its HTTP API served by uvicorn."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from cloud_service.api import create_app
from cloud_service.config import CloudConfig
from cloud_service.ingest import Consumer
from cloud_service.metrics import Metrics
from cloud_service.store import open_store
from contract import codec, topics
from contract.bundle import pack_bundle
from contract.payloads import AlertEvent, GatewayStatus, UplinkBatch
from tests.conftest import DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY
from tests.support.broker import free_port
from tests.support.bundles import flip_byte, variant
from tests.support.cloud import ServerThread, make_bundle
from tests.support.mqtt import Recorder
from tests.test_cloud_core import malformed_payloads

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEATURES = ("s1", "s2", "s3", "s4")
W = 10


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    folder, pub = make_bundle(root / "test-1", root / "keys", window=W, features=FEATURES)
    return folder, pub, root / "keys" / "signing.key"


def cloud_config(tmp_path: Path, mosquitto, bundle_path: Path, pub: Path,
                 **over) -> CloudConfig:
    data = {
        "broker": {"host": mosquitto.host, "port": mosquitto.port, "reconnect_min_delay": 0.2,
                   "reconnect_max_delay": 1},
        "client_id": f"cloud-{uuid.uuid4().hex[:8]}",
        "store": {"url": f"sqlite:///{tmp_path / 'cloud.db'}", "synchronous": "NORMAL"},
        "bundle": {"path": str(bundle_path), "trusted_keys": [str(pub)]},
        "registry": {"path": str(tmp_path / "bundles")},
        "api_token": TOKEN,
        "scoring": {"batch_max": 256, "max_delay": 0.02},
        "http": {"host": "127.0.0.1", "port": free_port()},
    }
    for key, value in over.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return CloudConfig(**data)


class Running:
    def __init__(self, cfg: CloudConfig) -> None:
        self.cfg = cfg
        self.server = ServerThread(create_app(cfg), cfg.http.host, cfg.http.port).start()
        self.http = httpx.Client(base_url=self.server.url, timeout=30)
        self.service = self.server.server.config.app.state.service
        wait_until(lambda: self.http.get("/readyz").status_code == 200, 30, "service ready")

    def close(self) -> None:
        self.http.close()
        self.server.stop()


@pytest.fixture
def cloud(tmp_path, broker, bundle):
    running = Running(cloud_config(tmp_path, broker, bundle[0], bundle[1]))
    yield running
    running.close()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Publisher:
    def __init__(self, broker) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"pub-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def publisher(broker):
    p = Publisher(broker)
    yield p
    p.close()


def ticks(gateway: str, asset: str, first_seq: int, n: int, level: float = 0.0,
          seed: int = 0) -> UplinkBatch:
    rng = np.random.default_rng(seed + first_seq)
    prob = np.full(n, 0.2, np.float32)
    prob[: max(0, W - 1 - first_seq)] = np.nan
    return UplinkBatch(gateway=gateway, asset=asset, first_seq=first_seq,
                       timestamps=1_800_000_000.0 + np.arange(first_seq, first_seq + n),
                       features=FEATURES,
                       values=rng.normal(level, 0.2, (n, len(FEATURES))).astype(np.float32),
                       probability=prob, rul=np.where(np.isnan(prob), np.nan, 80.0),
                       model_version="edge-7")


def send_batches(pub: Publisher, gateway: str, asset: str, total: int, size: int,
                 level: float = 0.0) -> None:
    for first in range(0, total, size):
        b = ticks(gateway, asset, first, min(size, total - first), level)
        pub.send(topics.uplink(gateway), codec.encode_uplink(b))


def asset_state(c: Running, gateway: str, asset: str) -> dict | None:
    r = c.http.get(f"/api/v1/assets/{gateway}/{asset}")
    return r.json() if r.status_code == 200 else None


def all_pages(c: Running, path: str, cursor: str = "after_seq", key: str = "seq") -> list[dict]:
    items, after = [], None
    while True:
        params = {"limit": 200, **({cursor: after} if after is not None else {})}
        page = c.http.get(path, params=params).json()
        items += page["items"]
        after = page[f"next_{cursor}"]
        if after is None:
            return items


def test_batches_land_as_rows_and_every_complete_window_is_scored(cloud, publisher):
    plan = {("gw-a", "engine-1"): 137, ("gw-a", "engine-2"): 60, ("gw-b", "engine-1"): 9}
    for (gw, asset), n in plan.items():
        send_batches(publisher, gw, asset, n, size=25)
    for (gw, asset), n in plan.items():
        wait_until(lambda gw=gw, asset=asset, n=n: (asset_state(cloud, gw, asset) or {}).get(
            "ticks") == n, 20, f"{n} ticks of {gw}/{asset}")
        rows = all_pages(cloud, f"/api/v1/assets/{gw}/{asset}/ticks")
        assert [r["seq"] for r in rows] == list(range(n))
        assert set(rows[0]["values"]) == set(FEATURES)
        expected = list(range(W - 1, n))
        wait_until(lambda gw=gw, asset=asset, e=expected: len(all_pages(
            cloud, f"/api/v1/assets/{gw}/{asset}/predictions")) == len(e), 20, "predictions")
        preds = all_pages(cloud, f"/api/v1/assets/{gw}/{asset}/predictions")
        assert [p["seq"] for p in preds] == expected
        for p in preds:
            assert 0 <= p["probability"] <= 1 and 0 <= p["rul"] <= 125
            assert p["edge_probability"] == pytest.approx(0.2)
            assert p["diff"] == pytest.approx(abs(p["probability"] - 0.2), abs=1e-6)
            assert p["model_version"] == "test-1" and p["edge_model_version"] == "edge-7"
    state = asset_state(cloud, "gw-a", "engine-1")
    assert state["scored_seq"] == 136 and state["state"] == "NORMAL"
    assert state["edge_probability"] == pytest.approx(0.2)
    # Time range on ticks:
    window = cloud.http.get("/api/v1/assets/gw-a/engine-1/ticks",
                            params={"since": 1_800_000_010, "until": 1_800_000_020}).json()
    assert [r["seq"] for r in window["items"]] == list(range(10, 20))
    gateways = {g["gateway"]: g for g in cloud.http.get("/api/v1/gateways").json()}
    assert gateways["gw-a"]["assets"] == 2 and gateways["gw-a"]["last_seen"] > 0
    metrics = cloud.http.get("/metrics").text
    assert 'pdm_cloud_rows_inserted_total{table="ticks"} 206.0' in metrics
    assert "pdm_cloud_scoring_backlog 0.0" in metrics
    assert "pdm_cloud_scoring_batch_size_count" in metrics


def test_redelivered_batch_adds_nothing(cloud, publisher):
    b = codec.encode_uplink(ticks("gw-r", "pump-1", 0, 30))
    publisher.send(topics.uplink("gw-r"), b)
    wait_until(lambda: (asset_state(cloud, "gw-r", "pump-1") or {}).get("scored_seq") == 29, 20,
               "first copy stored and scored")
    publisher.send(topics.uplink("gw-r"), b)
    publisher.send(topics.uplink("gw-r"), codec.encode_uplink(ticks("gw-r", "pump-1", 30, 1)))
    wait_until(lambda: asset_state(cloud, "gw-r", "pump-1")["ticks"] == 31, 20, "tick 30")
    wait_until(lambda: asset_state(cloud, "gw-r", "pump-1")["scored_seq"] == 30, 20, "score 30")
    preds = all_pages(cloud, "/api/v1/assets/gw-r/pump-1/predictions")
    assert [p["seq"] for p in preds] == list(range(W - 1, 31))
    assert "pdm_cloud_duplicate_ticks_total 30.0" in cloud.http.get("/metrics").text


def test_malformed_payloads_are_dead_lettered_and_the_service_keeps_serving(cloud, publisher):
    cases = malformed_payloads()
    for topic, payload in cases.values():
        publisher.send(topic, payload)
    # A good batch after all of them is still stored.
    publisher.send(topics.uplink("gw1"), codec.encode_uplink(ticks("gw1", "ok-1", 0, 12)))
    wait_until(lambda: (asset_state(cloud, "gw1", "ok-1") or {}).get("ticks") == 12, 20,
               "the good batch")
    assert cloud.http.get("/api/v1/dead-letters").status_code == 401
    page = cloud.http.get("/api/v1/dead-letters", headers=AUTH, params={"limit": 100}).json()
    got = sorted(d["reason"] for d in page["items"])
    assert got == sorted(c.removesuffix("-2") for c in cases)
    by_reason = {d["reason"]: d for d in page["items"]}
    mismatch = by_reason["gateway-mismatch"]
    assert mismatch["topic"] == "pdm/v1/gw-other/uplink" and mismatch["gateway"] == "gw-other"
    big = by_reason["too-large"]
    assert big["size"] > 256 * 1024 and len(big["payload_base64"]) <= 4 * 4096 / 3 + 4
    only = cloud.http.get("/api/v1/dead-letters", headers=AUTH,
                          params={"reason": "truncated"}).json()["items"]
    assert [d["reason"] for d in only] == ["truncated"]
    metrics = cloud.http.get("/metrics").text
    assert 'pdm_cloud_dead_letters_total{reason="non-finite"} 1.0' in metrics
    assert 'pdm_cloud_dead_letters_total{reason="unknown-version"} 2.0' in metrics
    assert cloud.http.get("/readyz").json() == {"ready": True, "reasons": []}


def test_gateway_status_and_cloud_alerts(cloud, publisher, broker):
    rec = Recorder(broker.host, broker.port, [topics.subscription("cloud-alert")])
    try:
        status = GatewayStatus(gateway="gw-s", online=True, time=time.time(),
                               model_version="edge-7", agent_version="0.1.0")
        publisher.send(topics.status("gw-s"), codec.encode_json(status), retain=True)
        wait_until(lambda: any(g["gateway"] == "gw-s" and g["online"]
                               for g in cloud.http.get("/api/v1/gateways").json()), 20, "online")
        # Low, then high first-feature values: the test model's probability goes to ~1.
        publisher.send(topics.uplink("gw-s"),
                       codec.encode_uplink(ticks("gw-s", "m-1", 0, 20, level=-2.0)))
        publisher.send(topics.uplink("gw-s"),
                       codec.encode_uplink(ticks("gw-s", "m-1", 20, 20, level=3.0)))
        def events() -> list[AlertEvent]:
            return [codec.decode_json(m.payload, AlertEvent) for m in rec.messages]

        assert rec.wait_for(lambda msgs: any(b'"CRITICAL"' in m.payload for m in msgs), 20)
        assert {m.topic for m in rec.messages} == {"pdm/v1/gw-s/m-1/cloud-alert"}
        got = events()
        assert all(e.source == "cloud" and e.model_version == "test-1" for e in got)
        assert all(e.kind == "transition" and e.old_state != e.new_state for e in got)
        # The window mean rises tick by tick: NORMAL -> (WARNING ->) CRITICAL, in seq order.
        assert got[0].old_state.value == "NORMAL" and got[-1].new_state.value == "CRITICAL"
        assert [e.seq for e in got] == sorted(e.seq for e in got) and got[0].seq >= 20
        alerts = cloud.http.get("/api/v1/alerts", params={"gateway": "gw-s"}).json()["items"]
        assert [(a["seq"], a["new_state"]) for a in alerts] == [
            (e.seq, e.new_state.value) for e in got]
        critical = cloud.http.get("/api/v1/alerts", params={"state": "CRITICAL"}).json()
        assert [a["seq"] for a in critical["items"]] == [got[-1].seq]
        wait_until(lambda: asset_state(cloud, "gw-s", "m-1")["state"] == "CRITICAL", 10,
                   "asset state")
        offline = GatewayStatus(gateway="gw-s", online=False, time=time.time())
        publisher.send(topics.status("gw-s"), codec.encode_json(offline), retain=True)
        wait_until(lambda: not next(g for g in cloud.http.get("/api/v1/gateways").json()
                                    if g["gateway"] == "gw-s")["online"], 20, "offline")
    finally:
        rec.close()


def test_alerts_are_acknowledged_once_and_every_query_filter_filters(cloud, publisher):
    h = cloud.http
    publisher.send(topics.uplink("gw-f"),
                   codec.encode_uplink(ticks("gw-f", "hot", 0, 20, level=-2.0)))
    publisher.send(topics.uplink("gw-f"),
                   codec.encode_uplink(ticks("gw-f", "hot", 20, 20, level=3.0)))
    send_batches(publisher, "gw-f", "calm", 30, 10, level=-2.0)
    send_batches(publisher, "gw-g", "calm", 30, 10, level=-2.0)
    wait_until(lambda: (asset_state(cloud, "gw-f", "hot") or {}).get("state") == "CRITICAL"
               and all((asset_state(cloud, g, "calm") or {}).get("scored_seq") == 29
                       for g in ("gw-f", "gw-g")), 30, "three assets scored")
    # ?state= on assets: only the assets in that state; a wrong one names the right ones
    def assets(**params) -> list[tuple[str, str]]:
        r = h.get("/api/v1/assets", params=params)
        assert r.status_code == 200, r.text
        return [(a["gateway"], a["asset"]) for a in r.json()]

    assert assets(state="CRITICAL") == [("gw-f", "hot")]
    assert assets(state="NORMAL") == [("gw-f", "calm"), ("gw-g", "calm")]
    assert assets(state="WARNING") == []
    assert assets(gateway="gw-g") == [("gw-g", "calm")]
    assert assets(gateway="gw-f", state="NORMAL") == [("gw-f", "calm")]
    bad = h.get("/api/v1/assets", params={"state": "critical"})
    assert bad.status_code == 422 and all(s in bad.text for s in ("NORMAL", "WARNING",
                                                                  "CRITICAL"))
    # ticks and predictions: seq and time ranges
    page = h.get("/api/v1/assets/gw-g/calm/ticks",
                 params={"after_seq": 4, "to_seq": 12}).json()["items"]
    assert [t["seq"] for t in page] == list(range(5, 13))
    t0 = 1_800_000_000.0
    page = h.get("/api/v1/assets/gw-g/calm/ticks",
                 params={"since": t0 + 20, "until": t0 + 23}).json()["items"]
    assert [t["seq"] for t in page] == [20, 21, 22]
    page = h.get("/api/v1/assets/gw-g/calm/predictions",
                 params={"after_seq": 20, "to_seq": 25}).json()["items"]
    assert [p["seq"] for p in page] == list(range(21, 26))
    # alerts: by gateway, asset, state, time and acknowledgement
    alerts = h.get("/api/v1/alerts").json()["items"]
    assert alerts and {(a["gateway"], a["asset"]) for a in alerts} == {("gw-f", "hot")}
    assert all(not a["acknowledged"] and a["acknowledged_by"] is None for a in alerts)
    assert h.get("/api/v1/alerts", params={"gateway": "gw-g"}).json()["items"] == []
    assert h.get("/api/v1/alerts", params={"asset": "calm"}).json()["items"] == []
    assert h.get("/api/v1/alerts", params={"since": alerts[-1]["published_at"] + 1}
                 ).json()["items"] == []
    critical = alerts[-1]
    assert critical["new_state"] == "CRITICAL"
    assert [a["id"] for a in h.get("/api/v1/alerts", params={"state": "CRITICAL"}
                                   ).json()["items"]] == [critical["id"]]
    # acknowledge: the write token, a valid body, once
    url = f"/api/v1/alerts/{critical['id']}/acknowledge"
    body = {"by": "Ada Operator", "note": "bearing inspected, replacement booked"}
    assert h.post(url, json=body).status_code == 401
    for wrong in ({"by": ""}, {"by": "   "}, {"by": "x" * 65}, {"by": "Ada", "note": "n" * 2001},
                  {"by": "Ada", "colour": "red"}, {"note": "who?"}):
        r = h.post(url, json=wrong, headers=AUTH)
        assert r.status_code == 422, (wrong, r.text)
    missing = h.post(f"/api/v1/alerts/{critical['id'] + 999}/acknowledge", json=body,
                     headers=AUTH)
    assert missing.status_code == 404 and "no alert" in missing.json()["detail"]
    before = time.time()
    done = h.post(url, json=body, headers=AUTH)
    assert done.status_code == 200, done.text
    acked = done.json()
    assert acked["acknowledged"] and acked["acknowledged_by"] == "Ada Operator"
    assert acked["ack_note"] == body["note"] and before <= acked["acknowledged_at"] <= time.time()
    assert {k: v for k, v in acked.items() if not k.startswith("ack")} == \
        {k: v for k, v in critical.items() if not k.startswith("ack")}
    again = h.post(url, json={"by": "Bob"}, headers=AUTH)
    assert again.status_code == 409 and "'Ada Operator'" in again.json()["detail"]
    stored = h.get("/api/v1/alerts", params={"acknowledged": "true"}).json()["items"]
    assert stored == [acked]
    still_open = h.get("/api/v1/alerts", params={"acknowledged": "false"}).json()["items"]
    assert [a["id"] for a in still_open] == [a["id"] for a in alerts if a["id"] != critical["id"]]
    # dead letters: a reason that does not exist is refused, not answered with nothing
    r = h.get("/api/v1/dead-letters", params={"reason": "nonsense"}, headers=AUTH)
    assert r.status_code == 422 and "not-json" in r.json()["detail"]
    assert h.get("/api/v1/dead-letters", params={"reason": "not-json"},
                 headers=AUTH).status_code == 200


def test_http_routes_answer_and_writes_need_the_token(cloud, bundle, tmp_path):
    h = cloud.http
    assert h.get("/healthz").json() == {"status": "ok"}
    assert h.get("/docs").status_code == 200
    spec = h.get("/openapi.json").json()
    assert "/api/v1/assets/{gateway}/{asset}/ticks" in spec["paths"]
    for path in ("/api/v1/gateways", "/api/v1/assets", "/api/v1/alerts", "/api/v1/models"):
        assert h.get(path).status_code == 200, path
    missing = h.get("/api/v1/assets/gw-x/none")
    assert missing.status_code == 404 and "no asset" in missing.json()["detail"]
    assert h.get("/api/v1/assets/bad%20id/x").status_code == 422
    (model,) = h.get("/api/v1/models").json()
    assert model["version"] == "test-1" and model["scoring"] and model["source"] == "config"
    # Writes and admin reads without (or with a wrong) token: 401 JSON.
    tar = pack_bundle(variant(bundle[0], tmp_path / "v2", "test-2", bundle[2]))
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = h.post("/api/v1/models", content=tar, headers=headers)
        assert r.status_code == 401 and "api_token" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
        assert h.get("/api/v1/models/test-1/bundle", headers=headers).status_code == 401
    # Upload a signed bundle, then again (idempotent), then a tampered one.
    r = h.post("/api/v1/models", content=tar, headers={**AUTH, "Content-Type":
                                                         "application/x-tar"})
    assert r.status_code == 201, r.text
    assert r.json()["version"] == "test-2" and not r.json()["scoring"]
    assert h.post("/api/v1/models", content=tar, headers=AUTH).status_code == 200
    tampered_dir = variant(bundle[0], tmp_path / "v3", "test-3", bundle[2])
    flip_byte(tampered_dir / "model.keras")
    r = h.post("/api/v1/models", content=pack_bundle(tampered_dir), headers=AUTH)
    assert r.status_code == 422 and "SHA-256" in r.json()["detail"]
    other = variant(bundle[0], tmp_path / "v2b", "test-2", bundle[2],
                    change=lambda folder, doc: doc.update(horizon=31))
    assert h.post("/api/v1/models", content=pack_bundle(other), headers=AUTH).status_code == 409
    assert h.post("/api/v1/models", content=b"not a tar", headers=AUTH).status_code == 422
    # Download what gateways fetch.
    got = h.get("/api/v1/models/test-2/bundle", headers=AUTH)
    assert got.status_code == 200 and got.content == tar
    assert h.get("/api/v1/models/nope/bundle", headers=AUTH).status_code == 404
    versions = [m["version"] for m in h.get("/api/v1/models").json()]
    assert versions == ["test-1", "test-2"]


def test_two_consumers_on_the_shared_subscription_store_each_tick_once(tmp_path, broker,
                                                                       bundle, publisher):
    consumers = []
    for i in range(2):
        cfg = cloud_config(tmp_path / f"c{i}", broker, bundle[0], bundle[1])
        store = open_store(cfg.store)
        c = Consumer(cfg, store, Metrics())
        c.start()
        assert c.connected.wait(10)
        consumers.append((c, store))
    try:
        time.sleep(0.3)  # both subscriptions in place
        for asset in ("e1", "e2", "e3"):
            send_batches(publisher, "gw-share", asset, 400, size=10)

        def stored() -> list[tuple[str, int]]:
            out = []
            for _, store in consumers:
                for asset in ("e1", "e2", "e3"):
                    out += [(asset, r["seq"]) for r in store.ticks(
                        "gw-share", asset, -1, None, None, None, 10_000)]
            return out

        wait_until(lambda: len(stored()) >= 1200, 30, "1200 ticks across both stores")
        time.sleep(0.3)
        rows = stored()
        assert len(rows) == 1200 and len(set(rows)) == 1200
        shares = [sum(a["ticks"] for a in store.assets("gw-share")) for _, store in consumers]
        assert all(s > 0 for s in shares), shares
    finally:
        for c, store in consumers:
            c.stop()
            store.close()


def test_service_resumes_its_session_after_a_broker_restart(cloud, publisher, broker):
    publisher.send(topics.uplink("gw-b"), codec.encode_uplink(ticks("gw-b", "x", 0, 10)))
    wait_until(lambda: (asset_state(cloud, "gw-b", "x") or {}).get("ticks") == 10, 20, "ticks")
    broker.restart()
    wait_until(lambda: cloud.http.get("/readyz").status_code == 200, 30, "reconnected")
    pub = Publisher(broker)
    try:
        pub.send(topics.uplink("gw-b"), codec.encode_uplink(ticks("gw-b", "x", 10, 10)))
    finally:
        pub.close()
    wait_until(lambda: (asset_state(cloud, "gw-b", "x") or {}).get("ticks") == 20, 20,
               "ticks after the restart")


def test_readyz_names_what_is_missing(tmp_path, broker, bundle):
    bad_key = tmp_path / "other.pub"
    from contract.bundle import generate_keypair

    generate_keypair(tmp_path / "other.key", bad_key)
    cfg = cloud_config(tmp_path, broker, bundle[0], bad_key,
                       broker={"port": free_port()})
    server = ServerThread(create_app(cfg), cfg.http.host, cfg.http.port).start()
    try:
        r = httpx.get(server.url + "/readyz")
        assert r.status_code == 503
        reasons = " | ".join(r.json()["reasons"])
        assert "not connected to the MQTT broker" in reasons
        assert "model not loaded" in reasons and "trusted key" in reasons
        assert httpx.get(server.url + "/healthz").status_code == 200
    finally:
        server.stop()


@pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(),
                    reason="models/default is not built yet")
def test_default_bundle_scores_cmapss_ticks(tmp_path, broker, publisher, data_dir):
    from contract.bundle import verify_bundle
    from contract.cmapss import COLUMNS, read_cmapss

    manifest = verify_bundle(DEFAULT_BUNDLE, [DEFAULT_BUNDLE_KEY])
    rows = read_cmapss(data_dir / "test_FD001.txt")
    units = [rows[rows[:, 0] == u] for u in np.unique(rows[:, 0])]
    unit = next(u for u in units if len(u) > manifest.window)  # long enough to be scored
    cols = [COLUMNS.index(f) for f in manifest.features]
    values = unit[:, cols].astype(np.float32)
    n = len(values)
    c = Running(cloud_config(tmp_path, broker, DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY))
    try:
        b = UplinkBatch(gateway="gw-fd", asset="engine-1", first_seq=0,
                        timestamps=1_800_000_000.0 + np.arange(n),
                        features=tuple(manifest.features), values=values,
                        probability=np.full(n, np.nan, np.float32),
                        rul=np.full(n, np.nan, np.float32), model_version=manifest.version)
        publisher.send(topics.uplink("gw-fd"), codec.encode_uplink(b))
        wait_until(lambda: (asset_state(c, "gw-fd", "engine-1") or {}).get("scored_seq")
                   == n - 1, 60, "the default model's scores")
        preds = all_pages(c, "/api/v1/assets/gw-fd/engine-1/predictions")
        assert [p["seq"] for p in preds] == list(range(manifest.window - 1, n))
        assert all(0 <= p["probability"] <= 1 and 0 <= p["rul"] <= manifest.rul_cap
                   for p in preds)
        (model,) = c.http.get("/api/v1/models").json()
        assert model["version"] == manifest.version and model["scoring"]
        json.dumps(preds)
    finally:
        c.close()


def test_schemathesis_finds_no_server_error(cloud, publisher, tmp_path):
    """Property-based requests generated from /openapi.json (with the token, so the write and
    admin routes are exercised too): no response may be a 5xx."""
    import shutil
    import subprocess
    import sys

    send_batches(publisher, "gw-fuzz", "a1", 2 * W, 5)  # some rows for the read routes
    wait_until(lambda: asset_state(cloud, "gw-fuzz", "a1") is not None, 30, "rows stored")
    st = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    out = subprocess.run(
        [st, "run", f"{cloud.server.url}/openapi.json", "--checks", "not_a_server_error",
         "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", "25", "--seed", "1",
         "--phases", "examples,coverage,fuzzing", "--workers", "1", "--no-color",
         "--request-timeout", "30"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
    assert generated and int(generated[1]) > 100 and generated[1] == generated[2], out.stdout
