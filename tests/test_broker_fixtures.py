"""The broker fixtures: one MQTT 5 publish/subscribe through each, with paho-mqtt 2.x."""

from __future__ import annotations

import ssl
import threading
import uuid

import paho.mqtt.client as mqtt

from tests.support.mqtt import Recorder


def publish_once(host: str, port: int, topic: str, payload: bytes, tls=None) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5)
    if tls is not None:
        client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.client_cert),
                       keyfile=str(tls.client_key))
    client.connect(host, port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


def test_plain_broker_delivers_a_qos1_message(broker):
    rec = Recorder(broker.host, broker.port, ["fixture/#"])
    publish_once(broker.host, broker.port, "fixture/plain", b"hello")
    assert rec.wait_for(lambda ms: any(m.payload == b"hello" for m in ms), timeout=10)
    assert rec.messages[0].topic == "fixture/plain"
    rec.close()


def test_tls_broker_delivers_with_client_certificates_and_refuses_without(tls_broker):
    tls = tls_broker.tls
    rec = Recorder(tls_broker.host, tls_broker.port, ["fixture/#"], tls=tls)
    publish_once(tls_broker.host, tls_broker.port, "fixture/tls", b"secret", tls=tls)
    assert rec.wait_for(lambda ms: any(m.payload == b"secret" for m in ms), timeout=10)
    rec.close()

    # Without a client certificate: TLS 1.3 completes the client side of the handshake, then
    # the broker drops the connection, so no CONNACK ever arrives.
    connected = threading.Event()
    anonymous = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    anonymous.tls_set(ca_certs=str(tls.ca))  # trusts the server, shows no certificate
    anonymous.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
    try:
        anonymous.connect(tls_broker.host, tls_broker.port)
    except (ssl.SSLError, OSError):
        pass
    else:
        anonymous.loop_start()
        assert not connected.wait(3)
        anonymous.loop_stop()


def test_broker_stops_and_restarts_on_the_same_port(broker):
    port = broker.port
    broker.restart()
    assert broker.port == port
    rec = Recorder(broker.host, broker.port, ["fixture/#"])
    publish_once(broker.host, broker.port, "fixture/again", b"1")
    assert rec.wait_for(lambda ms: len(ms) == 1, timeout=10)
    rec.close()
