"""The MQTT consumer: uplink batches, gateway statuses and model-update reports in, rows
out.

paho-mqtt 2.x, MQTT 5, a persistent session (clean_start=False from the very first connect,
with a long session expiry) so the broker keeps queuing our share of the uplink while we are
away. The uplink subscription is shared (`$share/<group>/pdm/v1/+/uplink`): replicas in one
group split the messages. Every message is acknowledged manually, and only after the
transaction holding its rows (or its dead letter) has committed; a crash before that makes the
broker deliver it again, and the (gateway, asset, seq) keys make the second copy a no-op.

Threads: paho's network thread only puts messages on a bounded queue (when it is full, paho
stops reading the socket: back-pressure). A writer thread decodes a group of messages, writes
them in one transaction and then acknowledges them in arrival order.

Leaving for good: the broker keeps a stopped replica's session, and goes on queuing that
replica's share of the uplink in it until the session expires. That is right for a restart and
for the last replica, but a replica removed by a scale-down would strand its share. So a
replica that stops while others are live hands over (`hand_over`): it leaves the shared
subscriptions, stores and acknowledges what the broker had already sent it, and then
disconnects with a session expiry of 0, so the broker forgets it and sends the others
everything.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_service.config import CloudConfig
from cloud_service.deadletters import DeadLetter
from cloud_service.metrics import Metrics
from cloud_service.store import IngestStore, Inserted, Received, ReportUpdate, StatusUpdate
from contract import codec, topics
from contract.errors import ContractError
from contract.payloads import GatewayStatus, UpdateReport

log = logging.getLogger(__name__)
Decoded = Received | StatusUpdate | ReportUpdate | DeadLetter | None


def decode_message(topic: str, payload: bytes, max_bytes: int, keep_bytes: int,
                   received_at: float) -> Decoded:
    """What one MQTT message means for the store (pure). None: nothing to store (an empty
    retained status, which is how a retained message is cleared).

    The topic's gateway is the authenticated one: the broker's ACL lets a client publish only
    under its own certificate's id. A payload naming another gateway is refused (dead letter
    "gateway-mismatch"), never stored under either name."""
    def dead(detail: str, gateway: str | None = None, reason: str | None = None) -> DeadLetter:
        return DeadLetter.of(topic, gateway, detail, payload, keep_bytes, received_at, reason)

    try:
        where = topics.parse(topic)
    except ContractError as exc:
        return dead(str(exc), reason="bad-topic")
    try:
        if where.kind in ("uplink", "escalate"):
            batch = codec.decode_uplink(payload, max_bytes)
            if where.kind == "escalate" and not batch.escalated:
                batch = batch.model_copy(update={"escalated": True})
            if batch.gateway != where.gateway:
                return dead(f"gateway mismatch: the payload says {batch.gateway!r}, the topic "
                            f"{where.gateway!r}", where.gateway, "gateway-mismatch")
            return Received(batch, received_at)
        if where.kind == "status":
            if not payload:
                return None
            status = codec.decode_json(payload, GatewayStatus, max_bytes)
            if status.gateway != where.gateway:
                return dead(f"gateway mismatch: the payload says {status.gateway!r}, the topic "
                            f"{where.gateway!r}", where.gateway, "gateway-mismatch")
            return StatusUpdate(status, received_at)
        if where.kind == "update":
            report = codec.decode_json(payload, UpdateReport, max_bytes)
            if report.gateway != where.gateway:
                return dead(f"gateway mismatch: the payload says {report.gateway!r}, the topic "
                            f"{where.gateway!r}", where.gateway, "gateway-mismatch")
            return ReportUpdate(report, received_at)
        return dead(f"topic kind {where.kind!r} is not consumed here", where.gateway,
                    "bad-topic")
    except ContractError as exc:
        return dead(str(exc), where.gateway)
    except Exception as exc:  # a bug must not stop the consumer; keep the evidence
        log.exception("unexpected error decoding a message on %s", topic)
        return dead(f"internal error while decoding: {type(exc).__name__}: {exc}",
                    where.gateway, "invalid")


@dataclass(frozen=True)
class _Message:
    generation: int
    topic: str
    payload: bytes
    mid: int
    qos: int
    received_at: float


class Consumer:
    """Connects, subscribes, stores, acknowledges; reconnects with backoff on its own."""

    def __init__(self, cfg: CloudConfig, store: IngestStore, metrics: Metrics,
                 on_inserted: Callable[[list[Inserted]], None] = lambda _: None) -> None:
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.on_inserted = on_inserted
        self.connected = threading.Event()
        self.uplink_filter = topics.shared(cfg.share_group, topics.subscription("uplink"))
        self.status_filter = topics.subscription("status")
        # Model-update reports feed rollout status; shared like the uplink, since every replica
        # writes the same store.
        self.update_filter = topics.shared(cfg.share_group, topics.subscription("update"))
        self.escalate_filter = topics.shared(cfg.share_group, topics.subscription("escalate"))
        self._inbox: queue.Queue[_Message] = queue.Queue(cfg.ingest.queue_max_messages)
        self._last_message = time.monotonic()
        self._handling = False
        self._forget_session = False
        self._generation = 0
        self._ever_connected = False
        self._stopping = threading.Event()
        self._writer: threading.Thread | None = None
        self.last_error: str | None = None
        self.store_error: str | None = None
        b = cfg.broker
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                        protocol=mqtt.MQTTv5, manual_ack=True)
        c.manual_ack_set(True)
        c.max_queued_messages_set(0)
        # paho annotates the delays as int, but it only compares, doubles and sleeps on them:
        # the fractional seconds our config allows work as given.
        c.reconnect_delay_set(min_delay=b.reconnect_min_delay,  # type: ignore[arg-type]
                              max_delay=b.reconnect_max_delay)  # type: ignore[arg-type]
        if b.username:
            c.username_pw_set(b.username, b.password.get_secret_value() if b.password else None)
        if b.tls.enabled:
            c.tls_set(ca_certs=str(b.tls.ca_file) if b.tls.ca_file else None,
                      certfile=str(b.tls.cert_file) if b.tls.cert_file else None,
                      keyfile=str(b.tls.key_file) if b.tls.key_file else None,
                      cert_reqs=ssl.CERT_REQUIRED)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.broker.session_expiry
        # clean_start=False from the first connect: a session made with clean_start=True is not
        # saved by Mosquitto, and our queued uplink would be lost across a restart.
        self.client.connect_async(self.cfg.broker.host, self.cfg.broker.port,
                                  keepalive=self.cfg.broker.keepalive, clean_start=False,
                                  properties=props)
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer",
                                        daemon=True)
        self._writer.start()
        self.client.loop_start()

    def stop(self, timeout: float = 10) -> None:
        """Stop reading, finish the group being written (and acknowledge it), disconnect. What
        is still queued is not acknowledged: the broker delivers it again next time."""
        self._stopping.set()
        if self._writer:
            self._writer.join(timeout)
        if self._forget_session:
            props = Properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
            self.client.disconnect(properties=props)
        else:
            self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()
        self.metrics.broker_connected.set(0)

    def hand_over(self, quiet: float = 1.0, timeout: float = 30) -> bool:
        """Leave the shared subscriptions for good (other replicas take every message from
        now on), store and acknowledge what the broker had sent already, and have the session
        forgotten at `stop`. True when done; False (the session is kept, so nothing is lost)
        when not connected or messages kept coming for `timeout` seconds."""
        if not self.connected.is_set():
            log.warning("not connected: keeping the broker session (its queued messages wait "
                        "for a replica with client id %s)", self.cfg.client_id)
            return False
        shared = [self.uplink_filter, self.update_filter, self.escalate_filter]
        result, _ = self.client.unsubscribe(shared)
        if result != mqtt.MQTT_ERR_SUCCESS:
            log.warning("could not leave the shared subscriptions (%s); keeping the session",
                        mqtt.error_string(result))
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self._inbox.empty() and not self._handling
                    and time.monotonic() - self._last_message >= quiet):
                self._forget_session = True
                log.info("handed the uplink over to the other replicas")
                return True
            time.sleep(0.05)
        log.warning("messages kept coming for %.0f s after leaving the shared subscriptions; "
                    "keeping the session", timeout)
        return False

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False):
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused the connection: {reason_code}"
            log.warning("%s", self.last_error)
            return
        self._generation += 1
        if self._ever_connected:
            self.metrics.reconnects.inc()
        self._ever_connected = True
        log.info("connected to %s:%d as %s (session present: %s)", self.cfg.broker.host,
                 self.cfg.broker.port, self.cfg.client_id, flags.session_present)
        client.subscribe([(self.uplink_filter, 1), (self.status_filter, 1),
                          (self.update_filter, 1), (self.escalate_filter, 1)])
        self.last_error = None
        self.connected.set()
        self.metrics.broker_connected.set(1)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set() and not self._stopping.is_set():
            log.warning("lost the broker (%s); reconnecting", reason_code)
            self.last_error = f"disconnected: {reason_code}"
        self.connected.clear()
        self.metrics.broker_connected.set(0)

    def _on_message(self, client, userdata, msg) -> None:
        self._last_message = time.monotonic()
        item = _Message(self._generation, msg.topic, bytes(msg.payload), msg.mid, msg.qos,
                        time.time())
        while True:  # blocks paho's thread when the writer is behind: back-pressure
            try:
                self._inbox.put(item, timeout=0.5)
                break
            except queue.Full:
                if self._stopping.is_set():
                    return  # not acknowledged: delivered again after the restart
        self.metrics.ingest_queue.set(self._inbox.qsize())

    # -- writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        limit = self.cfg.ingest.commit_max_messages
        while not self._stopping.is_set():
            try:
                first = self._inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            group = [first]
            while len(group) < limit:
                try:
                    group.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            self.metrics.ingest_queue.set(self._inbox.qsize())
            self._handling = True
            try:
                self._handle(group)
            finally:
                self._handling = False

    def _handle(self, group: list[_Message]) -> None:
        cfg = self.cfg
        batches: list[Received] = []
        statuses: list[StatusUpdate] = []
        reports: list[ReportUpdate] = []
        dead: list[DeadLetter] = []
        kinds: list[tuple[str, str]] = []
        for m in group:
            kind = m.topic.rsplit("/", 1)[-1]
            kind = kind if kind in ("uplink", "escalate", "status", "update") else "other"
            d = decode_message(m.topic, m.payload, cfg.ingest.max_payload_bytes,
                               cfg.dead_letters.keep_payload_bytes, m.received_at)
            if isinstance(d, Received):
                batches.append(d)
                kinds.append((kind, "stored"))
            elif isinstance(d, StatusUpdate):
                statuses.append(d)
                kinds.append((kind, "stored"))
            elif isinstance(d, ReportUpdate):
                reports.append(d)
                kinds.append((kind, "stored"))
            elif isinstance(d, DeadLetter):
                dead.append(d)
                kinds.append((kind, "dead_letter"))
                log.warning("dead letter from %s (%s): %s", d.topic, d.reason, d.detail)
            else:
                kinds.append((kind, "ignored"))
        t0 = time.perf_counter()
        inserted = self._commit(batches, statuses, dead, reports)
        if inserted is None:
            return  # stopping while the store fails: nothing acknowledged, all redelivered
        self.metrics.commit_seconds.observe(time.perf_counter() - t0)
        for kind, outcome in kinds:
            self.metrics.messages.labels(kind, outcome).inc()
        for d in dead:
            self.metrics.dead_letters.labels(d.reason).inc()
        received = sum(len(b.batch.timestamps) for b in batches)
        new = sum(i.new_rows for i in inserted)
        self.metrics.ticks_received.inc(received)
        self.metrics.rows_inserted.labels("ticks").inc(new)
        self.metrics.rows_inserted.labels("dead_letters").inc(len(dead))
        self.metrics.duplicate_ticks.inc(received - new)
        self.metrics.escalated_ticks.inc(
            sum(len(b.batch.timestamps) for b in batches if b.batch.escalated))
        try:
            self.on_inserted(inserted)
        except Exception:
            log.exception("notifying the scorer failed (the windows are found at restart)")
        for m in group:
            # An id from an earlier connection may name another message now; those are not
            # acknowledged and the broker sends them again (the store ignores the copy).
            if m.qos > 0 and m.generation == self._generation:
                self.client.ack(m.mid, m.qos)

    def _commit(self, batches, statuses, dead, reports) -> list[Inserted] | None:
        delay = 0.1
        while True:
            try:
                inserted = self.store.write_ingest(batches, statuses, dead, reports)
                self.store_error = None
                return inserted
            except Exception as exc:  # disk full, locked, database down: retry, never drop
                self.metrics.store_errors.labels("ingest").inc()
                self.store_error = f"store write failed: {exc}"
                log.error("%s; retrying in %.1fs", self.store_error, delay)
                if self._stopping.wait(delay):
                    return None
                delay = min(delay * 2, 5.0)
