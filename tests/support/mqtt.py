"""A recording MQTT 5 subscriber for tests (paho-mqtt 2.x)."""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as mqtt


class Recorder:
    """Subscribes to `filters` and keeps every message; `persistent` keeps its session (and the
    messages queued for it) across broker restarts."""

    def __init__(self, host: str, port: int, filters: list[str], persistent: bool = False,
                 tls: object | None = None) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.filters = filters
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"rec-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
        if tls is not None:
            self.client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.client_cert),
                                keyfile=str(tls.client_key))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._pending: set[int] = set()
        self.client.reconnect_delay_set(0.2, 1)
        props = None
        if persistent:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.connect(host, port, clean_start=not persistent, properties=props)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("recorder could not connect")

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        # "connected" once the broker has acknowledged every subscription: a test that stops
        # the broker right after the recorder is up must not leave a session without them
        self._pending = {client.subscribe(f, qos=1)[1] for f in self.filters}
        if not self._pending:
            self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, props) -> None:
        self._pending.discard(mid)
        if not self._pending:
            self.connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def wait_for(self, predicate, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
