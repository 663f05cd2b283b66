"""Alert webhooks: selection per severity, the generic and Slack bodies, the delivery queue in
both store backends, and the worker against a real local HTTP receiver (down for a while, then
up; failing, then answering), with one or several replicas; then the whole service: MQTT in,
webhooks out."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from cloud_service.config import NotificationsConfig, StoreConfig, WebhookConfig
from cloud_service.metrics import Metrics
from cloud_service.notifications import (
    WebhookSender,
    delivery_id,
    generic_body,
    plan_deliveries,
    retry_delay,
    slack_body,
    webhooks_for,
)
from cloud_service.store import AlertRow, ScoreWrite, Store, open_store
from contract import codec, topics
from contract.payloads import AlertEvent, AlertState
from tests.support.receiver import WebhookReceiver

T0 = 1_800_000_000.0
GW = "gw-n"
SECRET = "webhook-secret-0123456789"


def event(asset: str = "m-1", seq: int = 40, old: str = "NORMAL", new: str = "CRITICAL",
          kind: str = "transition") -> AlertEvent:
    return AlertEvent(kind=kind, source="cloud", gateway=GW, asset=asset,  # type: ignore[arg-type]
                      old_state=AlertState(old), new_state=AlertState(new), probability=0.93,
                      rul=12.0, thresholds={"warning_enter": 0.5}, model_version="test-1",
                      seq=seq, tick_time=T0 + seq, published_at=time.time())


def hook(name: str, url: str = "http://127.0.0.1:9/hook", **kw) -> WebhookConfig:
    return WebhookConfig(name=name, url=url, **kw)  # type: ignore[arg-type]


def metric(counter, *labels: str) -> float:
    return counter.labels(*labels)._value.get()


# -- the pure core --------------------------------------------------------------------------

def test_webhooks_are_chosen_by_the_state_the_asset_moved_to():
    pager = hook("pager", severities=["CRITICAL"])
    chat = hook("chat", format="slack", severities=["WARNING", "CRITICAL", "NORMAL"])
    ops = hook("ops")  # the default: WARNING and CRITICAL
    hooks = [pager, chat, ops]
    assert [w.name for w in webhooks_for(AlertState.CRITICAL, hooks)] == ["pager", "chat", "ops"]
    assert [w.name for w in webhooks_for(AlertState.WARNING, hooks)] == ["chat", "ops"]
    assert [w.name for w in webhooks_for(AlertState.NORMAL, hooks)] == ["chat"]
    planned = plan_deliveries(event(new="WARNING"), hooks)
    assert [d.webhook for d in planned] == ["chat", "ops"]
    assert all(codec.decode_json(d.event.encode(), AlertEvent) == event(new="WARNING")
               .model_copy(update={"published_at": d.created_at}) for d in planned)
    # a verdict on an escalated window changes no state and notifies no one
    assert plan_deliveries(event(old="CRITICAL", new="CRITICAL", kind="verdict"), hooks) == []


def test_a_delivery_id_names_one_alert_for_one_webhook():
    a = event(seq=40)
    assert delivery_id("ops", a) == delivery_id("ops", event(seq=40))  # any replica, any time
    assert len({delivery_id("ops", a), delivery_id("chat", a), delivery_id("ops", event(seq=41)),
                delivery_id("ops", event(asset="m-2"))}) == 4


def test_generic_and_slack_bodies():
    alert = event()
    generic = generic_body(alert, "ops", "d-1")
    assert generic["delivery_id"] == "d-1" and generic["severity"] == "CRITICAL"
    assert AlertEvent(**generic["alert"]) == alert
    assert "m-1 on gw-n went NORMAL -> CRITICAL" in generic["summary"]
    slack = slack_body(alert, "d-1")
    assert slack["text"] == generic["summary"]
    assert [b["type"] for b in slack["blocks"]] == ["header", "section", "context"]
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1]
              for f in slack["blocks"][1]["fields"]}
    assert fields["*Failure probability*"] == "0.93"
    assert fields["*Remaining useful life*"] == "12 cycles"
    assert "delivery d-1" in slack["blocks"][2]["elements"][0]["text"]


def test_retry_delays_double_with_jitter_up_to_the_cap():
    rng = random.Random(1)
    for attempt in range(1, 15):
        ceiling = min(60.0, 2.0 * 2 ** (attempt - 1))
        delays = [retry_delay(attempt, 2.0, 60.0, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not one value
    assert retry_delay(50, 2.0, 60.0, rng) <= 60.0


@pytest.mark.parametrize("bad, message", [
    ({"webhooks": [{"name": "a", "url": "http://x/"}, {"name": "a", "url": "http://y/"}]},
     "webhook names must differ: a given twice"),
    ({"webhooks": [{"name": "a", "url": "ftp://x/"}]}, "must be an http:// or https:// URL"),
    ({"webhooks": [{"name": "a", "url": "http://x/", "severities": ["FATAL"]}]},
     "'NORMAL', 'WARNING' or 'CRITICAL'"),
    ({"webhooks": [{"name": "a", "url": "http://x/", "severities": []}]}, "at least 1 item"),
    ({"webhooks": [{"name": "a", "url": "http://x/", "format": "teams"}]}, "'generic' or"),
    ({"retry_min_delay": 10, "retry_max_delay": 5}, "retry_max_delay must be at least"),
])
def test_bad_webhook_settings_are_refused_with_the_reason(bad, message):
    with pytest.raises(ValidationError, match=message):
        NotificationsConfig(**bad)


# -- the queue in the store (both backends) -------------------------------------------------

def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    if kind == "sqlite":
        return open_store(StoreConfig(url=f"sqlite:///{tmp_path / 'cloud.db'}",
                                      synchronous="NORMAL"))
    return open_store(StoreConfig(url=request.getfixturevalue("postgres_url")))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_kind(request) -> str:
    return request.param


def queue_alerts(store: Store, events: list[AlertEvent], hooks: list[WebhookConfig]) -> int:
    """Store the alerts as the scorer does, their deliveries in the same write."""
    write = ScoreWrite()
    for e in events:
        write.alerts.append(AlertRow(
            gateway=e.gateway, asset=e.asset, seq=e.seq, source=e.source,
            old_state=e.old_state.value, new_state=e.new_state.value,
            probability=e.probability, rul=e.rul, model_version=e.model_version,
            tick_time=e.tick_time, published_at=e.published_at))
        write.deliveries.extend(plan_deliveries(e, hooks))
    store.write_scores(write)
    return len(write.deliveries)


def notifications(url: str, **kw) -> NotificationsConfig:
    settings = {"timeout": 2, "retry_min_delay": 0.05, "retry_max_delay": 0.3,
                "poll_interval": 0.05, **kw}
    return NotificationsConfig(webhooks=[{"name": "ops", "url": url, "secret": SECRET}],
                               **settings)


def test_the_queue_hands_each_delivery_to_one_replica_and_keeps_one_per_alert(
        store_kind, tmp_path, request):
    store = make_store(store_kind, tmp_path, request)
    try:
        hooks = [hook("ops"), hook("chat", severities=["CRITICAL"])]
        alerts = [event(seq=s, new="WARNING" if s % 2 else "CRITICAL") for s in range(10, 20)]
        assert queue_alerts(store, alerts, hooks) == 15
        assert queue_alerts(store, alerts, hooks) == 15  # the same alerts again: no new rows
        assert store.pending_deliveries() == 15
        first = store.claim_deliveries("r1", 10, hold=60)
        second = store.claim_deliveries("r2", 10, hold=60)
        assert len(first) == 10 and len(second) == 5
        assert not {d.id for d in first} & {d.id for d in second}
        assert store.claim_deliveries("r3", 10, hold=60) == []  # all held
        # only the holder may settle a row
        assert not store.finish_delivery(first[0].id, "r2", delivered=True)
        assert store.finish_delivery(first[0].id, "r1", delivered=True)
        assert not store.finish_delivery(first[0].id, "r1", delivered=True)  # once
        assert store.retry_delivery(first[1].id, "r1", delay=3600, error="HTTP 500")
        assert store.pending_deliveries() == 14
        # a claim that lapses (its replica died) goes to another replica
        assert store.retry_delivery(second[0].id, "r2", delay=0, error="HTTP 503")
        again = store.claim_deliveries("r3", 10, hold=60)
        assert [(d.id, d.attempts) for d in again] == [(second[0].id, 1)]
    finally:
        store.close()


def test_deliveries_of_assets_another_replica_took_are_not_queued(store_kind, tmp_path,
                                                                  request):
    """The owner fence drops the alert and its deliveries together."""
    from cloud_service.store import Received
    from tests.test_cloud_core import batch

    store = make_store(store_kind, tmp_path, request)
    try:
        store.write_ingest([Received(batch(0, 5, gateway=GW, asset="m-1"), T0)], [], [])
        assert store.claim_assets("other", 10) == [(GW, "m-1")]
        write = ScoreWrite(deliveries=plan_deliveries(event(), [hook("ops")]))
        assert store.write_scores(write, owner="me").refused == {(GW, "m-1")}
        assert store.pending_deliveries() == 0
    finally:
        store.close()


# -- the worker against a real receiver -----------------------------------------------------

def sender(store: Store, cfg: NotificationsConfig, replica: str = "r1") -> WebhookSender:
    return WebhookSender(store, cfg, Metrics(), replica=replica)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_a_receiver_down_for_a_while_then_up_gets_every_alert_once(store_kind, tmp_path,
                                                                   request):
    receiver = WebhookReceiver()  # its port is chosen; nothing listens on it yet
    cfg = notifications(receiver.url)
    store = make_store(store_kind, tmp_path, request)
    alerts = [event(asset=f"m-{i}", seq=30 + i) for i in range(6)]
    assert queue_alerts(store, alerts, cfg.webhooks) == 6
    first = sender(store, cfg)
    first.start()
    try:
        wait_until(lambda: metric(first.metrics.webhook_failures, "ops", "connect") >= 12, 30,
                   "every delivery tried at least twice while the receiver is down")
    finally:
        first.stop()  # the replica restarts while the receiver is still down
        store.close()
    assert metric(first.metrics.webhook_deliveries, "ops", "delivered") == 0
    assert metric(first.metrics.webhook_deliveries, "ops", "failed") >= 12
    receiver.start()
    store = make_store(store_kind, tmp_path, request)  # the same database, opened anew
    second = sender(store, cfg)
    second.start()
    try:
        got = receiver.wait_for(6)
        wait_until(lambda: store.pending_deliveries() == 0, 10, "an empty queue")
        time.sleep(0.5)  # a few more polls: nothing else may arrive
        assert len(receiver.requests) == 6  # once each, none twice
        ids = [r.headers["X-PDM-Delivery"] for r in got]
        assert sorted(ids) == sorted(delivery_id("ops", e) for e in alerts)
        assert {r.body["alert"]["asset"] for r in got} == {e.asset for e in alerts}
        assert all(int(r.headers["X-PDM-Attempt"]) >= 3 for r in got)
        assert all(r.body["delivery_id"] == r.headers["X-PDM-Delivery"] for r in got)
        assert metric(second.metrics.webhook_deliveries, "ops", "delivered") == 6
        assert metric(second.metrics.webhook_deliveries, "ops", "failed") == 0
    finally:
        second.stop()
        store.close()
        receiver.stop()


def test_a_receiver_failing_then_answering_is_retried_with_backoff(tmp_path):
    import hashlib
    import hmac

    receiver = WebhookReceiver(answers=[500, 503]).start()
    cfg = notifications(receiver.url)
    store = open_store(StoreConfig(url=f"sqlite:///{tmp_path / 'cloud.db'}"))
    worker = sender(store, cfg)
    try:
        queue_alerts(store, [event()], cfg.webhooks)
        worker.start()
        (got,) = receiver.wait_for(1)
        wait_until(lambda: store.pending_deliveries() == 0, 10, "an empty queue")
        assert [r.status for r in receiver.requests] == [500, 503, 200]
        assert [int(r.headers["X-PDM-Attempt"]) for r in receiver.requests] == [1, 2, 3]
        assert len({r.headers["X-PDM-Delivery"] for r in receiver.requests}) == 1
        expected = hmac.new(SECRET.encode(), got.raw, hashlib.sha256).hexdigest()
        assert got.headers["X-PDM-Signature"] == f"sha256={expected}"
        m = worker.metrics
        assert metric(m.webhook_failures, "ops", "http_500") == 1
        assert metric(m.webhook_failures, "ops", "http_503") == 1
        assert metric(m.webhook_deliveries, "ops", "failed") == 2
        assert metric(m.webhook_deliveries, "ops", "delivered") == 1
        page = m.render().decode()
        assert 'pdm_cloud_webhook_deliveries_total{outcome="delivered",webhook="ops"} 1.0' in page
        wait_until(lambda: "pdm_cloud_webhook_queue_depth 0.0" in m.render().decode(), 5,
                   "the queue depth gauge")
    finally:
        worker.stop()
        store.close()
        receiver.stop()


def test_a_delivery_failing_past_give_up_after_is_given_up_and_counted(tmp_path):
    receiver = WebhookReceiver(answers=[500] * 100).start()
    cfg = notifications(receiver.url, give_up_after=0.5)
    store = open_store(StoreConfig(url=f"sqlite:///{tmp_path / 'cloud.db'}"))
    worker = sender(store, cfg)
    try:
        queue_alerts(store, [event()], cfg.webhooks)
        worker.start()
        wait_until(lambda: metric(worker.metrics.webhook_deliveries, "ops", "gave_up") == 1,
                   20, "the delivery given up")
        assert store.pending_deliveries() == 0
        assert store.claim_deliveries("r9", 10, hold=1) == []
        assert not receiver.accepted()
    finally:
        worker.stop()
        store.close()
        receiver.stop()


def test_replicas_draining_one_queue_send_each_alert_once(postgres_url):
    receiver = WebhookReceiver(answers=[500] * 5).start()
    cfg = notifications(receiver.url, batch=3)
    stores = [open_store(StoreConfig(url=postgres_url)) for _ in range(3)]
    alerts = [event(asset=f"m-{i}", seq=20 + i) for i in range(40)]
    workers = [sender(s, cfg, replica=f"r{i}") for i, s in enumerate(stores)]
    for w in workers:
        w.start()
    try:
        # alerts keep arriving while the replicas drain
        feeder = threading.Thread(target=lambda: [queue_alerts(stores[0], alerts[i:i + 5],
                                                               cfg.webhooks)
                                                  for i in range(0, 40, 5)])
        feeder.start()
        feeder.join()
        receiver.wait_for(40)
        wait_until(lambda: stores[0].pending_deliveries() == 0, 20, "an empty queue")
        time.sleep(0.5)
        ids = [r.headers["X-PDM-Delivery"] for r in receiver.accepted()]
        assert len(ids) == len(set(ids)) == 40
        delivered = [metric(w.metrics.webhook_deliveries, "ops", "delivered") for w in workers]
        assert sum(delivered) == 40
    finally:
        for w in workers:
            w.stop()
        for s in stores:
            s.close()
        receiver.stop()


# -- the whole service: MQTT in, webhooks out -----------------------------------------------

@pytest.mark.slow
def test_cloud_alerts_reach_the_webhooks_that_want_their_severity(tmp_path, broker):
    from tests.support.mqtt import Recorder
    from tests.test_cloud_service import Publisher, Running, cloud_config, make_bundle, ticks

    folder, pub = make_bundle(tmp_path / "bundle", tmp_path / "keys", window=10)
    pager, chat = WebhookReceiver().start(), WebhookReceiver().start()
    cfg = cloud_config(tmp_path, broker, folder, pub, notifications={
        "retry_min_delay": 0.1, "retry_max_delay": 0.5, "webhooks": [
            {"name": "pager", "url": pager.url, "severities": ["CRITICAL"]},
            {"name": "chat", "url": chat.url, "format": "slack",
             "severities": ["NORMAL", "WARNING", "CRITICAL"]}]})
    cloud = Running(cfg)
    publisher = Publisher(broker)
    rec = Recorder(broker.host, broker.port, [topics.subscription("cloud-alert")])
    try:
        publisher.send(topics.uplink(GW), codec.encode_uplink(ticks(GW, "m-1", 0, 20, -2.0)))
        publisher.send(topics.uplink(GW), codec.encode_uplink(ticks(GW, "m-1", 20, 20, 3.0)))
        assert rec.wait_for(lambda msgs: any(b'"CRITICAL"' in m.payload for m in msgs), 30)
        published = [codec.decode_json(m.payload, AlertEvent) for m in rec.messages]
        stored = cloud.http.get("/api/v1/alerts", params={"gateway": GW}).json()["items"]
        assert [a["new_state"] for a in stored] == [e.new_state.value for e in published]
        (critical,) = pager.wait_for(1)
        assert critical.body["alert"] == published[-1].model_dump(mode="json")
        slack = chat.wait_for(len(published))
        assert [r.body["text"].split(":")[0] for r in slack] == [
            e.new_state.value for e in published]
        assert all(set(r.body) == {"text", "blocks"} for r in slack)
        # a delivery is counted once the receiver's answer is back, a moment after it arrived
        delivered = ['pdm_cloud_webhook_deliveries_total{outcome="delivered",webhook="pager"} 1.0',
                     f'pdm_cloud_webhook_deliveries_total{{outcome="delivered",webhook="chat"}} '
                     f'{float(len(published))}']
        wait_until(lambda: all(line in cloud.http.get("/metrics").text for line in delivered),
                   10, "the delivery counters")
        assert len(pager.requests) == 1
        # the dashboard's fleet view counts the asset as CRITICAL (at the next lease renewal)
        wait_until(lambda: 'pdm_cloud_assets_by_state{state="CRITICAL"} 1.0'
                   in cloud.http.get("/metrics").text, 10, "the fleet state gauge")
    finally:
        rec.close()
        publisher.close()
        cloud.close()
        pager.stop()
        chat.stop()
