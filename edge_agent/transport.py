"""MQTT transports behind one small interface: paho-mqtt 2.x (MQTT 5, TLS, mutual TLS) and the
AWS IoT Device SDK v2 MQTT 5 client (mutual TLS). Both reconnect on their own with backoff."""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

from edge_agent.config import BrokerConfig
from edge_agent.health import OutageLog

log = logging.getLogger(__name__)
MessageHandler = Callable[[str, bytes], None]


class Published(Protocol):
    def wait(self, timeout: float) -> bool:
        """True once the broker acknowledged the message (at once for QoS 0)."""


class Transport(Protocol):
    connected: threading.Event
    reconnects: int
    outage: OutageLog  # failures logged at ERROR, first and then periodically
    ever_connected: bool

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def publish(self, topic: str, payload: bytes, qos: int = 1,
                retain: bool = False) -> Published: ...
    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None: ...


def make_transport(cfg: BrokerConfig, client_id: str,
                   will: tuple[str, bytes] | None = None, role: str = "broker") -> Transport:
    """`role` names the link in the log ("broker", "uplink")."""
    if cfg.transport == "aws-iot":
        return AwsIotTransport(cfg, client_id, will, role)
    return PahoTransport(cfg, client_id, will, role)


class _PahoPublished:
    def __init__(self, info) -> None:
        self.info = info

    def wait(self, timeout: float) -> bool:
        """True once the broker acknowledged; False on timeout or when paho refused the
        message (it raises from is_published() for a publish made while disconnected)."""
        deadline = time.monotonic() + timeout
        try:
            while not self.info.is_published():
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.001)
        except (RuntimeError, ValueError):
            return False
        return True


class PahoTransport:
    def __init__(self, cfg: BrokerConfig, client_id: str,
                 will: tuple[str, bytes] | None = None, role: str = "broker") -> None:
        import paho.mqtt.client as mqtt

        self.cfg = cfg
        self.connected = threading.Event()
        self.reconnects = 0
        self.outage = OutageLog(log, f"{role} {cfg.host}:{cfg.port}")
        self._stopping = False
        self._subs: dict[str, tuple[int, MessageHandler]] = {}
        self._mqtt = mqtt
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv5)
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(100)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        if cfg.username:
            c.username_pw_set(cfg.username,
                              cfg.password.get_secret_value() if cfg.password else None)
        if cfg.tls.enabled:
            # ca_certs=None makes paho use the system's CAs.
            c.tls_set(ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                      certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                      keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                      cert_reqs=ssl.CERT_REQUIRED)
        if will:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c
        self.ever_connected = False

    def start(self) -> None:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False):
        return _PahoPublished(self.client.publish(topic, payload, qos=qos, retain=retain))

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        self._subs[topic_filter] = (qos, handler)
        if self.connected.is_set():
            self.client.subscribe(topic_filter, qos=qos)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.outage.failed(f"the broker refused the connection ({reason_code})")
            return
        if self.ever_connected:
            self.reconnects += 1
        self.ever_connected = True
        self.outage.recovered()
        log.info("connected to %s", self.outage.link)
        for topic_filter, (qos, _) in self._subs.items():
            client.subscribe(topic_filter, qos=qos)
        self.connected.set()

    def _on_connect_fail(self, client, userdata) -> None:
        # paho calls this from inside its `except OSError`: the exception is the reason.
        exc = sys.exc_info()[1]
        self.outage.failed(describe_os_error(exc) if exc else "connection failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._stopping:
            log.info("disconnected from %s", self.outage.link)
        elif self.connected.is_set():
            self.outage.failed(f"connection lost ({reason_code}); reconnecting")
        self.connected.clear()

    def _on_message(self, client, userdata, msg) -> None:
        for topic_filter, (_, handler) in self._subs.items():
            if self._mqtt.topic_matches_sub(topic_filter, msg.topic):
                try:
                    handler(msg.topic, msg.payload)
                except Exception:
                    log.exception("handler for %s failed", msg.topic)


def describe_os_error(exc: BaseException) -> str:
    """A socket or TLS error in a few words ("connection refused", "TLS:
    CERTIFICATE_VERIFY_FAILED")."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


class _FuturePublished:
    def __init__(self, future: Future) -> None:
        self.future = future

    def wait(self, timeout: float) -> bool:
        try:
            self.future.result(timeout)
            return True
        except Exception:
            return False


class AwsIotTransport:
    """AWS IoT Core (or any broker with mutual TLS) through awsiotsdk's MQTT 5 client."""

    def __init__(self, cfg: BrokerConfig, client_id: str,
                 will: tuple[str, bytes] | None = None, role: str = "broker") -> None:
        from awscrt import mqtt5
        from awsiot import mqtt5_client_builder

        if not (cfg.tls.cert_file and cfg.tls.key_file):
            raise ValueError("transport aws-iot needs tls.cert_file and tls.key_file")
        self.cfg = cfg
        self.connected = threading.Event()
        self.reconnects = 0
        self.outage = OutageLog(log, f"{role} {cfg.host}:{cfg.port} (aws-iot)")
        self._stopping = False
        self.ever_connected = False
        self._subs: dict[str, tuple[int, MessageHandler]] = {}
        self._mqtt5 = mqtt5
        kwargs = {}
        if cfg.tls.ca_file:
            kwargs["ca_filepath"] = str(cfg.tls.ca_file)
        if will:
            kwargs["will"] = mqtt5.PublishPacket(topic=will[0], payload=will[1],
                                                 qos=mqtt5.QoS.AT_LEAST_ONCE, retain=True)
        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint=cfg.host, port=cfg.port, cert_filepath=str(cfg.tls.cert_file),
            pri_key_filepath=str(cfg.tls.key_file), client_id=client_id,
            enable_metrics_collection=False,
            min_reconnect_delay_ms=500, max_reconnect_delay_ms=30_000,
            on_publish_received=self._on_publish_received,
            on_lifecycle_connection_success=self._on_success,
            on_lifecycle_connection_failure=self._on_failure,
            on_lifecycle_disconnection=self._on_disconnection,
            **kwargs)

    def start(self) -> None:
        self.client.start()

    def stop(self) -> None:
        self._stopping = True
        self.client.stop()
        self.connected.clear()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False):
        packet = self._mqtt5.PublishPacket(topic=topic, payload=payload,
                                           qos=self._mqtt5.QoS(qos), retain=retain)
        return _FuturePublished(self.client.publish(packet))

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        self._subs[topic_filter] = (qos, handler)
        if self.connected.is_set():
            self._send_subscribe(topic_filter, qos)

    def _send_subscribe(self, topic_filter: str, qos: int) -> None:
        m = self._mqtt5
        self.client.subscribe(m.SubscribePacket(
            subscriptions=[m.Subscription(topic_filter=topic_filter, qos=m.QoS(qos))]))

    def _on_success(self, data) -> None:
        if self.ever_connected:
            self.reconnects += 1
        self.ever_connected = True
        self.outage.recovered()
        log.info("connected to %s", self.outage.link)
        for topic_filter, (qos, _) in self._subs.items():
            self._send_subscribe(topic_filter, qos)
        self.connected.set()

    def _on_failure(self, data) -> None:
        self.outage.failed(str(getattr(data, "exception", data)))

    def _on_disconnection(self, data) -> None:
        self.connected.clear()
        if self._stopping:
            log.info("disconnected from %s", self.outage.link)
        else:
            self.outage.failed(f"connection lost ({getattr(data, 'exception', data)}); "
                               "reconnecting")

    def _on_publish_received(self, data) -> None:
        import paho.mqtt.client as mqtt  # topic matching only

        packet = data.publish_packet
        for topic_filter, (_, handler) in self._subs.items():
            if mqtt.topic_matches_sub(topic_filter, packet.topic):
                try:
                    handler(packet.topic, bytes(packet.payload))
                except Exception:
                    log.exception("handler for %s failed", packet.topic)
