"""Identity and authorisation at the broker: the shipped Mosquitto config and ACL
(deploy/docker/mosquitto/), run by a real Mosquitto with certificates the `pki` command made.

A gateway must not publish as another gateway, read another gateway's topics, or write what
only the cloud writes; clients without a certificate from our CA must not connect; and the
real cloud ingest must never store a tick a gateway sent in another gateway's name."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509

from cloud_service.config import CloudConfig
from cloud_service.ingest import Consumer
from cloud_service.metrics import Metrics
from cloud_service.pki import PkiLayout
from cloud_service.store import open_store
from contract import codec, topics
from contract.payloads import GatewayStatus, UplinkBatch
from tests.conftest import DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY, REPO
from tests.support.broker import Mosquitto, free_port

pytestmark = pytest.mark.security

# How long a refused message is given to show up anyway. Each test also sends an allowed
# message after the refused one and waits for it, so the broker has dealt with both.
SETTLE = 0.5


def pki_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cloud_service", "pki", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory) -> Path:
    """A PKI made by the command line: CA, broker, cloud, gateways gw-a and gw-b."""
    folder = tmp_path_factory.mktemp("pki")
    for args in (("init", folder), ("gateway", "gw-a", folder), ("gateway", "gw-b", folder)):
        r = pki_cli(*args)
        assert r.returncode == 0, r.stderr
    return folder


@pytest.fixture(scope="module")
def foreign_pki(tmp_path_factory) -> Path:
    """Another CA, with a certificate for 'gw-a' and one for the cloud's name."""
    folder = tmp_path_factory.mktemp("foreign-pki")
    assert pki_cli("init", folder).returncode == 0
    assert pki_cli("gateway", "gw-a", folder).returncode == 0
    return folder


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, pki_dir):
    """Mosquitto running the shipped config and ACL with that PKI."""
    b = Mosquitto(tmp_path_factory.mktemp("shipped-broker"), shipped_pki=pki_dir).start()
    try:
        yield b
    finally:
        b.stop()


@dataclass
class Client:
    """One paho MQTT 5 client with one identity, recording what it receives."""

    mqtt: mqtt.Client
    received: list[mqtt.MQTTMessage]
    lock: threading.Condition
    suback: dict[int, list]
    puback: dict[int, str]

    def subscribe(self, *filters: str) -> list:
        """Subscribe and return the SUBACK reason codes."""
        result, mid = self.mqtt.subscribe([(f, 1) for f in filters])
        assert result == mqtt.MQTT_ERR_SUCCESS
        with self.lock:
            assert self.lock.wait_for(lambda: mid in self.suback, 10), "no SUBACK"
            return self.suback[mid]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> str:
        """Publish at QoS 1; the PUBACK's reason ("Not authorized" when the ACL refuses)."""
        info = self.mqtt.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        with self.lock:
            assert self.lock.wait_for(lambda: info.mid in self.puback, 10), "no PUBACK"
            return self.puback[info.mid]

    def topics(self) -> list[str]:
        with self.lock:
            return [m.topic for m in self.received]

    def wait_for(self, topic: str, timeout: float = 10) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: any(m.topic == topic for m in self.received),
                                      timeout)

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def connect(broker: Mosquitto, cert: Path | None, key: Path | None, ca: Path | None = None,
            tls: bool = True, login: tuple[str, str | None] | None = None,
            ) -> tuple[Client | None, str]:
    """Connect with a client certificate (or a user name and password); (client, "ok") or
    (None, why it was refused)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv5)
    lock = threading.Condition()
    received: list[mqtt.MQTTMessage] = []
    suback: dict[int, list] = {}
    puback: dict[int, str] = {}
    outcome: list[str] = []
    if login:
        c.username_pw_set(*login)
    if tls:
        c.tls_set(ca_certs=str(ca or broker.tls.ca), certfile=str(cert) if cert else None,
                  keyfile=str(key) if key else None, cert_reqs=ssl.CERT_REQUIRED)

    def on_connect(client, userdata, flags, reason, props):
        with lock:
            outcome.append("ok" if not reason.is_failure else f"refused: {reason}")
            lock.notify_all()

    def on_message(client, userdata, msg):
        with lock:
            received.append(msg)
            lock.notify_all()

    def on_subscribe(client, userdata, mid, reasons, props):
        with lock:
            suback[mid] = list(reasons)
            lock.notify_all()

    def on_publish(client, userdata, mid, reason, props):
        with lock:
            puback[mid] = str(reason)
            lock.notify_all()

    c.on_connect, c.on_message, c.on_subscribe = on_connect, on_message, on_subscribe
    c.on_publish = on_publish
    try:
        c.connect(broker.host, broker.port, keepalive=10)
    except (OSError, ssl.SSLError) as exc:
        return None, f"refused at TLS: {type(exc).__name__}: {exc}"
    c.loop_start()
    with lock:
        lock.wait_for(lambda: outcome, 5)
    if outcome == ["ok"]:
        return Client(c, received, lock, suback, puback), "ok"
    c.loop_stop()
    return None, outcome[0] if outcome else "no CONNACK (connection dropped)"


def identity(broker_pki: Path, name: str) -> tuple[Path, Path]:
    layout = PkiLayout(broker_pki)
    ident = layout.cloud if name == "cloud" else layout.gateway(name)
    return ident.cert, ident.key


@pytest.fixture
def clients(shipped, pki_dir):
    """connect_as("gw-a" | "gw-b" | "cloud") -> a connected Client, closed after the test."""
    made: list[Client] = []

    def connect_as(name: str) -> Client:
        client, why = connect(shipped, *identity(pki_dir, name))
        assert client is not None, f"{name} could not connect: {why}"
        made.append(client)
        return client

    yield connect_as
    for c in made:
        c.close()


def batch(gateway: str, asset: str = "engine-1", n: int = 5, first_seq: int = 0) -> bytes:
    return codec.encode_uplink(UplinkBatch(
        gateway=gateway, asset=asset, first_seq=first_seq,
        timestamps=1_800_000_000.0 + np.arange(n, dtype=np.float64), features=("s1", "s2"),
        values=np.ones((n, 2), np.float32), probability=np.full(n, 0.1, np.float32),
        rul=np.full(n, 90.0, np.float32), model_version="edge-1"))


# --- the pki command ----------------------------------------------------------------------

def test_pki_command_writes_identities_and_refuses_to_overwrite(pki_dir, tmp_path):
    layout = PkiLayout(pki_dir)
    for ident in (layout.ca, layout.broker, layout.cloud, layout.gateway("gw-a")):
        assert ident.key.stat().st_mode & 0o777 == 0o600, ident.key
        assert ident.cert.exists()
    gw = x509.load_pem_x509_certificate(layout.gateway("gw-a").cert.read_bytes())
    assert gw.subject.rfc4514_string() == "CN=gw-a"
    cloud = x509.load_pem_x509_certificate(layout.cloud.cert.read_bytes())
    assert cloud.subject.rfc4514_string() == "CN=pdm-cloud"
    broker = x509.load_pem_x509_certificate(layout.broker.cert.read_bytes())
    sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    key_before = layout.gateway("gw-a").key.read_bytes()
    for args in (("init", pki_dir), ("gateway", "gw-a", pki_dir)):
        r = pki_cli(*args)
        assert r.returncode != 0
        assert "already exists" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert layout.gateway("gw-a").key.read_bytes() == key_before

    for bad in ("gw/a", "#", "pdm-cloud"):  # not an id, an MQTT wildcard, the cloud's name
        r = pki_cli("gateway", bad, pki_dir)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert not (pki_dir / "gateways" / f"{bad}.key").exists()

    r = pki_cli("init", tmp_path / "more", "--host", "mosquitto", "--host", "10.0.0.5")
    assert r.returncode == 0, r.stderr
    more = x509.load_pem_x509_certificate((tmp_path / "more" / "broker.crt").read_bytes())
    sans = more.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "mosquitto"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1",
                                                                            "10.0.0.5"]
    assert pki_cli("gateway", "gw-x", tmp_path / "nothing-here").returncode != 0


# --- who may connect ------------------------------------------------------------------------

def test_clients_without_our_certificate_are_refused(shipped, pki_dir, foreign_pki):
    gw_a = PkiLayout(pki_dir).gateway("gw-a")
    ok, why = connect(shipped, gw_a.cert, gw_a.key)
    assert ok is not None, why
    ok.close()

    attempts = {
        "plain TCP, no TLS": connect(shipped, None, None, tls=False),
        "TLS without a client certificate": connect(shipped, None, None),
        "a gw-a certificate from another CA": connect(
            shipped, *identity(foreign_pki, "gw-a")),
        "a cloud certificate from another CA": connect(
            shipped, *identity(foreign_pki, "cloud")),
    }
    let_in = {what: why for what, (client, why) in attempts.items() if client is not None}
    for client, _ in attempts.values():
        if client is not None:
            client.close()
    assert not let_in, f"the broker let in: {sorted(let_in)}"


def test_a_revoked_gateway_is_refused(tmp_path):
    folder = tmp_path / "pki"
    assert pki_cli("init", folder).returncode == 0
    for name in ("gw-a", "gw-b"):
        assert pki_cli("gateway", name, folder).returncode == 0
    gw_b = PkiLayout(folder).gateway("gw-b")
    cert, key = tmp_path / "gw-b.crt", tmp_path / "gw-b.key"  # what the gateway still holds
    cert.write_bytes(gw_b.cert.read_bytes())
    key.write_bytes(gw_b.key.read_bytes())
    broker = Mosquitto(tmp_path / "broker", shipped_pki=folder).start()
    try:
        client, why = connect(broker, cert, key)
        assert client is not None, why
        client.close()
        r = pki_cli("revoke", "gw-b", folder)
        assert r.returncode == 0, r.stderr
        broker.reload()
        time.sleep(0.5)
        client, why = connect(broker, cert, key)
        if client is not None:
            client.close()
        assert client is None, "a revoked certificate still connects after a reload"
        other, why = connect(broker, *identity(folder, "gw-a"))
        assert other is not None, f"gw-a lost its access too: {why}"
        other.close()
        # The id can be issued again, with a new key.
        assert pki_cli("gateway", "gw-b", folder).returncode == 0
        client, why = connect(broker, gw_b.cert, gw_b.key)
        assert client is not None, why
        client.close()
    finally:
        broker.stop()


# --- what a gateway may do --------------------------------------------------------------------

def test_a_gateway_cannot_publish_as_another(clients):
    cloud, gw_a = clients("cloud"), clients("gw-a")
    cloud.subscribe(topics.subscription("uplink"), topics.subscription("status"),
                    topics.subscription("update"), topics.subscription("escalate"))
    spoofed = [topics.uplink("gw-b"), topics.status("gw-b"), topics.update("gw-b"),
               topics.escalate("gw-b"), topics.model("gw-b"),
               topics.cloud_alert("gw-b", "engine-1"), topics.verdict("gw-b", "engine-1")]
    refused = {topic: gw_a.publish(topic, batch("gw-b")) for topic in spoofed}
    assert set(refused.values()) == {"Not authorized"}, refused
    assert gw_a.publish(topics.uplink("gw-a"), batch("gw-a")) != "Not authorized"
    assert cloud.wait_for(topics.uplink("gw-a")), "gw-a's own uplink did not reach the cloud"
    time.sleep(SETTLE)
    assert cloud.topics() == [topics.uplink("gw-a")]

    # Nor plant announcements, cloud alerts or verdicts for itself: only the cloud writes those.
    gw_a.subscribe(topics.model("gw-a"), topics.subscription("cloud-alert", "gw-a"),
                   topics.subscription("verdict", "gw-a"))
    gw_a.publish(topics.model("gw-a"), b'{"version": "evil"}')
    gw_a.publish(topics.cloud_alert("gw-a", "engine-1"), b"{}")
    gw_a.publish(topics.verdict("gw-a", "engine-1"), b"{}")
    cloud.publish(topics.cloud_alert("gw-a", "engine-2"), b"{}")
    cloud.publish(topics.verdict("gw-a", "engine-3"), b"{}")
    assert gw_a.wait_for(topics.verdict("gw-a", "engine-3"))
    time.sleep(SETTLE)
    assert sorted(gw_a.topics()) == [topics.cloud_alert("gw-a", "engine-2"),
                                     topics.verdict("gw-a", "engine-3")]


def test_a_gateway_cannot_read_another(clients):
    cloud, gw_a, gw_b = clients("cloud"), clients("gw-a"), clients("gw-b")
    gw_b.subscribe("pdm/v1/#", "pdm/v1/gw-a/#", topics.model("gw-a"),
                   topics.subscription("cloud-alert", "gw-a"), topics.subscription("uplink"),
                   topics.subscription("verdict", "gw-a"),
                   topics.subscription("alert"), "#")
    gw_a.subscribe(topics.model("gw-a"))
    cloud.publish(topics.model("gw-a"), b'{"version": "2.0.0"}', retain=True)
    cloud.publish(topics.cloud_alert("gw-a", "engine-1"), b"{}")
    cloud.publish(topics.verdict("gw-a", "engine-1"), b"{}")
    for topic in (topics.uplink("gw-a"), topics.status("gw-a"), topics.escalate("gw-a"),
                  topics.alert("gw-a", "engine-1"), topics.state("gw-a", "engine-1")):
        gw_a.publish(topic, batch("gw-a"))
    assert gw_a.wait_for(topics.model("gw-a")), "gw-a did not get its own announcement"
    # gw-b's own: proves its wildcard subscriptions are live and get what is its own.
    cloud.publish(topics.model("gw-b"), b'{"version": "2.0.0"}')
    assert gw_b.wait_for(topics.model("gw-b"))
    time.sleep(SETTLE)
    assert [t for t in gw_b.topics() if "/gw-a/" in t] == []
    # A fresh subscriber gets no retained gw-a announcement either.
    late = clients("gw-b")
    late.subscribe(topics.model("gw-a"), "pdm/v1/+/model")
    time.sleep(SETTLE)
    assert late.topics() == []
    cloud.publish(topics.model("gw-a"), b"", retain=True)  # clear the retained message


def test_the_cloud_reads_every_gateway_through_its_shared_subscription(clients):
    cloud, gw_a, gw_b = clients("cloud"), clients("gw-a"), clients("gw-b")
    codes = cloud.subscribe(topics.shared("cloud", topics.subscription("uplink")),
                            topics.shared("cloud", topics.subscription("escalate")),
                            topics.shared("cloud", topics.subscription("update")),
                            topics.subscription("status"))
    assert all(not c.is_failure for c in codes), codes
    for gw, client in (("gw-a", gw_a), ("gw-b", gw_b)):
        for topic in (topics.uplink(gw), topics.escalate(gw), topics.update(gw),
                      topics.status(gw)):
            client.publish(topic, batch(gw))
    expected = {topics.uplink(g) for g in ("gw-a", "gw-b")} | {
        topics.escalate(g) for g in ("gw-a", "gw-b")} | {
        topics.update(g) for g in ("gw-a", "gw-b")} | {topics.status(g) for g in ("gw-a",
                                                                                  "gw-b")}
    for topic in expected:
        assert cloud.wait_for(topic), f"the cloud did not receive {topic}"


# --- the password-file alternative ---------------------------------------------------------------

TLS_SETTINGS = ("cafile", "certfile", "keyfile", "tls_version", "require_certificate",
                "use_identity_as_username", "crlfile")


def test_the_password_file_alternative_keeps_the_same_acl(tmp_path):
    """Where TLS is not possible: the shipped config without its TLS lines, plus a
    password_file whose user names are the gateway ids; the same ACL (%u = the user name)."""
    passwd = tmp_path / "passwd"
    secrets = {"gw-a": "secret-a-0123", "gw-b": "secret-b-0123", "pdm-cloud": "secret-c-0123"}
    for i, (user, password) in enumerate(secrets.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd),
                        user, password], check=True, capture_output=True, timeout=30)
    broker = Mosquitto(tmp_path / "broker", shipped_pki=tmp_path / "no-pki")
    lines = [line for line in broker.config.read_text().splitlines()
             if not line.split() or line.split()[0] not in TLS_SETTINGS]
    broker.config.write_text("\n".join([*lines, f"password_file {passwd}"]) + "\n")
    broker.start()
    made: list[Client] = []

    def login(user: str | None, password: str | None) -> Client | None:
        client, _ = connect(broker, None, None, tls=False,
                            login=(user, password) if user else None)
        if client is not None:
            made.append(client)
        return client

    try:
        assert login(None, None) is None, "anonymous client let in"
        assert login("gw-a", "wrong-password") is None, "wrong password let in"
        cloud = login("pdm-cloud", secrets["pdm-cloud"])
        gw_a = login("gw-a", secrets["gw-a"])
        assert cloud is not None and gw_a is not None
        cloud.subscribe(topics.subscription("uplink"))
        gw_a.publish(topics.uplink("gw-b"), batch("gw-b"))
        gw_a.publish(topics.uplink("gw-a"), batch("gw-a"))
        assert cloud.wait_for(topics.uplink("gw-a"))
        time.sleep(SETTLE)
        assert cloud.topics() == [topics.uplink("gw-a")]
        # The cloud's own config keys (broker.username/password) log it in.
        cfg = CloudConfig(
            broker={"host": broker.host, "port": broker.port, "username": "pdm-cloud",
                    "password": secrets["pdm-cloud"]},
            client_id=f"cloud-{uuid.uuid4().hex[:8]}", api_token="test-token-0123456789",
            store={"url": f"sqlite:///{tmp_path / 'cloud.db'}", "synchronous": "NORMAL"},
            bundle={"path": str(DEFAULT_BUNDLE), "trusted_keys": [str(DEFAULT_BUNDLE_KEY)]},
            registry={"path": str(tmp_path / "bundles")})
        store = open_store(cfg.store)
        consumer = Consumer(cfg, store, Metrics())
        consumer.start()
        try:
            assert consumer.connected.wait(15), consumer.last_error
        finally:
            consumer.stop()
            store.close()
    finally:
        for c in made:
            c.close()
        broker.stop()


# --- the real cloud ingest behind the shipped broker -------------------------------------------

def test_the_cloud_never_stores_a_spoofed_tick(shipped, pki_dir, clients, tmp_path):
    layout = PkiLayout(pki_dir)
    cfg = CloudConfig(
        broker={"host": "localhost", "port": shipped.port, "reconnect_min_delay": 0.2,
                "reconnect_max_delay": 1,
                "tls": {"enabled": True, "ca_file": str(layout.ca.cert),
                        "cert_file": str(layout.cloud.cert),
                        "key_file": str(layout.cloud.key)}},
        client_id=f"cloud-{uuid.uuid4().hex[:8]}", api_token="test-token-0123456789",
        # Its own group: its persistent session must not take a share of later tests' uplink.
        share_group=f"spoof-{uuid.uuid4().hex[:8]}",
        store={"url": f"sqlite:///{tmp_path / 'cloud.db'}", "synchronous": "NORMAL"},
        bundle={"path": str(DEFAULT_BUNDLE), "trusted_keys": [str(DEFAULT_BUNDLE_KEY)]},
        registry={"path": str(tmp_path / "bundles")})
    store = open_store(cfg.store)
    metrics = Metrics()
    consumer = Consumer(cfg, store, metrics)
    consumer.start()
    try:
        assert consumer.connected.wait(15), consumer.last_error
        time.sleep(0.3)  # subscriptions in place
        gw_a = clients("gw-a")
        # In gw-b's name on gw-b's topics: the broker drops them.
        gw_a.publish(topics.uplink("gw-b"), batch("gw-b", n=90))
        gw_a.publish(topics.escalate("gw-b"), batch("gw-b", n=5, first_seq=100))
        gw_a.publish(topics.status("gw-b"), codec.encode_json(GatewayStatus(
            gateway="gw-b", online=True, time=time.time(), model_version="evil")), retain=True)
        # In gw-b's name on its own topic: the broker lets it through (it is gw-a's topic),
        # ingest takes the gateway from the topic and dead-letters the mismatch.
        gw_a.publish(topics.uplink("gw-a"), batch("gw-b", n=7, first_seq=200))
        # And gw-a's own ticks, which must land.
        gw_a.publish(topics.uplink("gw-a"), batch("gw-a", n=10))

        def landed() -> bool:
            rows = store.ticks("gw-a", "engine-1", -1, None, None, None, 1000)
            return len(rows) == 10 and len(store.dead_letters(None, 0, 100)) >= 1

        deadline = time.monotonic() + 15
        while not landed() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(SETTLE)
        assert len(store.ticks("gw-a", "engine-1", -1, None, None, None, 1000)) == 10
        assert store.ticks("gw-b", "engine-1", -1, None, None, None, 1000) == []
        assert "gw-b" not in [g["gateway"] for g in store.gateways()]  # no spoofed status
        dead = store.dead_letters(None, 0, 100)
        assert [(d["gateway"], d["reason"]) for d in dead] == [("gw-a", "gateway-mismatch")]
        counted = metrics.dead_letters.labels("gateway-mismatch")._value.get()
        assert counted == 1
    finally:
        consumer.stop()
        store.close()


# --- the whole system behind the shipped broker -------------------------------------------------

@pytest.mark.slow
def test_the_agent_and_the_cloud_work_through_the_shipped_acl(pki_dir, tmp_path, data_dir):
    """The ACL grants what the real agent and the real cloud do: ticks stored and scored,
    the gateway's status, escalated windows answered with verdicts the agent receives."""
    import httpx
    import yaml

    from tests.test_cloud_service import Running, cloud_config, wait_until
    from tests.test_edge_agent import start_agent, unit_lengths
    from tests.test_escalation import metric

    # A broker of its own: the shared group's persistent sessions left by other tests would
    # take their share of this agent's uplink.
    shipped = Mosquitto(tmp_path / "broker", shipped_pki=pki_dir).start()
    layout, gateway = PkiLayout(pki_dir), "gw-a"
    gw_ident = layout.gateway(gateway)

    def tls(ident) -> dict:
        return {"enabled": True, "ca_file": str(layout.ca.cert), "cert_file": str(ident.cert),
                "key_file": str(ident.key)}

    cloud = Running(cloud_config(tmp_path, shipped, DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY,
                                 broker={"tls": tls(layout.cloud)}))
    units = [31, 34]
    port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "gateway_id": gateway,
        "broker": {"host": shipped.host, "port": shipped.port, "tls": tls(gw_ident)},
        "sources": [{"type": "cmapss", "file": str(data_dir / "test_FD001.txt"),
                     "units": units, "rate": 40}],
        "bundle": {"path": str(DEFAULT_BUNDLE), "trusted_keys": [str(DEFAULT_BUNDLE_KEY)]},
        "outbox": {"path": str(tmp_path / "outbox.db"), "batch_max_age": 0.5},
        "escalation": {"band": 0.1, "adopt_cloud_verdict": True},
        "metrics_port": port}))
    agent = start_agent(config)
    want = {f"engine-{u}": n for u, n in unit_lengths(data_dir).items() if u in units}
    try:
        def stored(asset: str) -> int:
            return len(cloud.http.get(f"/api/v1/assets/{gateway}/{asset}/ticks",
                                      params={"limit": 5000}).json()["items"])

        wait_until(lambda: all(stored(a) == n for a, n in want.items()), 120,
                   "every tick of the agent stored by the cloud")
        edge = lambda: httpx.get(f"http://127.0.0.1:{port}/metrics").text  # noqa: E731
        wait_until(lambda: metric(edge(), "pdm_edge_cloud_verdicts_total") >= 1, 30,
                   "a cloud verdict received by the agent (verdict through the ACL)")
        assert metric(edge(), "pdm_edge_escalations_total") >= 1
        gateways = {g["gateway"]: g for g in cloud.http.get("/api/v1/gateways").json()}
        assert gateways[gateway]["online"] is True
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
        cloud.close()
        shipped.stop()
