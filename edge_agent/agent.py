"""The agent's imperative shell: wires sources, the pipeline, the outbox and the transports.

Threads: each source emits into one queue; the main loop drains it, runs the pipeline, commits
the ticks to the outbox in one transaction per drained batch, then publishes alerts on the local
broker. A sender thread moves outbox ticks to the uplink and deletes them once acknowledged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from contract import codec, topics
from contract.bundle import PublicKeyLike, verify_bundle
from contract.errors import ContractError
from contract.manifest import Manifest
from contract.ota import KeyRing
from contract.payloads import AlertEvent, GatewayStatus, UplinkBatch
from contract.preprocess import OutOfRegimeLog
from edge_agent import __version__
from edge_agent.config import (
    AgentConfig,
    CmapssSource,
    CsvSource,
    ModbusSource,
    MqttSource,
    OpcUaSource,
)
from edge_agent.escalation import VerdictLedger
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import Outbox, PendingBatch
from edge_agent.pipeline import Pipeline, Processed
from edge_agent.readings import Reading, Rejected
from edge_agent.scorer import Scorer
from edge_agent.sources import mqtt_input
from edge_agent.sources.replay import CsvReplay, Replay, cmapss_streams
from edge_agent.transport import Published, Transport, make_transport
from edge_agent.updater import (
    BundleStore,
    Candidate,
    DownloadPolicy,
    OtaPolicy,
    UpdateError,
    Updater,
)

log = logging.getLogger("edge_agent")
ACK_TIMEOUT = 10.0


def ota_policy(cfg: AgentConfig) -> OtaPolicy:
    """The update policy the configuration asks for (keys minus revoked ones, download rules)."""
    b = cfg.bundle
    token = b.download_token.get_secret_value() if b.download_token else None
    return OtaPolicy(
        bundle_keys=KeyRing(b.trusted_keys, b.revoked_keys),
        announcement_keys=KeyRing(b.announcement_keys or b.trusted_keys, b.revoked_keys),
        downloads=DownloadPolicy(b.model_server, token, b.allow_file_urls),
        max_clock_skew=b.max_clock_skew)


def _connected(transport: Transport) -> float:
    return float(transport.connected.is_set())


def _down_for(transport: Transport) -> float:
    return transport.outage.down_for


def load_bundle(store: BundleStore,
                trusted_keys: Sequence[PublicKeyLike]) -> tuple[Manifest, Path]:
    """The active bundle (the last update, else the shipped one), verified."""
    path = store.active()
    try:
        return verify_bundle(path, trusted_keys), path
    except ContractError as exc:
        if path == store.shipped:
            raise
        log.error("active bundle %s refused (%s); falling back to %s", path, exc, store.shipped)
        return verify_bundle(store.shipped, trusted_keys), store.shipped


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.gateway = cfg.gateway_id
        self.metrics = AgentMetrics()
        state_dir = cfg.bundle.state_dir or Path(cfg.outbox.path).parent / "bundles"
        self.store = BundleStore(state_dir, Path(cfg.bundle.path))
        self.manifest, bundle_path = load_bundle(
            self.store, KeyRing(cfg.bundle.trusted_keys, cfg.bundle.revoked_keys).usable())
        self.scorer = Scorer(bundle_path / self.manifest.edge.file, self.manifest)
        esc = cfg.escalation
        self.pipeline = Pipeline(self.gateway, self.manifest, self.scorer, cfg.thresholds,
                                 esc.band if esc.enabled else None, esc.heads_disagree,
                                 esc.verdict_deadline if esc.adopt_cloud_verdict else None)
        self.verdicts = VerdictLedger(esc.verdict_deadline)
        # Verdicts arrive on the MQTT thread; the scoring loop applies them, in order.
        self.verdict_inbox: queue.SimpleQueue[AlertEvent] = queue.SimpleQueue()
        self.metrics.model.labels(self.manifest.version).set(1)
        self._pending_lock = threading.Lock()
        # Held while ticks enter the outbox and their escalations are published, and while the
        # sender takes and publishes a batch: an escalated window always goes out first.
        self._uplink_order = threading.Lock()
        self._pending: list[tuple[Callable[[], None], threading.Event]] = []
        self._shown: set[str] = set()  # assets whose state is retained on the local broker
        self.regime_log = OutOfRegimeLog()
        self.outbox = Outbox(cfg.outbox.path, cfg.outbox.max_bytes, len(self.manifest.columns),
                             cfg.outbox.replay_window)
        self.queue: queue.Queue[Reading] = queue.Queue(maxsize=1_000)
        self.stopping = threading.Event()
        self.urgent = threading.Event()
        self.threads: list[threading.Thread] = []
        self.replays: list[threading.Thread] = []
        self.pollers: list[threading.Thread] = []  # Modbus and OPC UA: they never end

        will = (topics.status(self.gateway), self._status(False))
        self.local: Transport = make_transport(cfg.broker, self._client_id("local"), will)
        same = cfg.uplink is None or cfg.uplink == cfg.broker
        self.uplink: Transport = self.local if same else make_transport(
            cfg.uplink_broker, self._client_id("uplink"), will, role="uplink")
        for role, tr in (("broker", self.local), ("uplink", self.uplink)):
            self.metrics.broker_up.labels(role).set_function(
                partial(_connected, tr))
            self.metrics.broker_down.labels(role).set_function(
                partial(_down_for, tr))
        self._build_sources()
        self.updater = Updater(
            self.gateway, self.store, ota_policy(cfg),
            current=lambda: (self.manifest, self.scorer, self.manifest.version),
            held_windows=self.pipeline.held_windows, swap=self.swap, shadow=self.shadow,
            publish=self._publish_uplink,
            stop=self.stopping,
            refused=lambda kind: self.metrics.updates_refused.labels(kind).inc())
        self.uplink.subscribe(topics.model(self.gateway), self.updater.on_message)
        if esc.enabled:
            self.uplink.subscribe(topics.subscription("verdict", self.gateway),
                                  self._on_verdict)

    def _client_id(self, role: str) -> str:
        # Each connection's own setting: on AWS IoT the uplink's client id must be the thing
        # name (the policy allows nothing else), whatever the plant broker calls us.
        cfg = self.cfg.uplink_broker if role == "uplink" else self.cfg.broker
        return cfg.client_id or f"{self.gateway}-{role}"

    def _status(self, online: bool) -> bytes:
        return codec.encode_json(GatewayStatus(
            gateway=self.gateway, online=online, time=time.time(),
            model_version=self.manifest.version, agent_version=__version__))

    # --- input ---------------------------------------------------------------------------
    def emit(self, reading: Reading) -> None:
        self.queue.put(reading)

    def reject(self, reason: str, detail: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        log.warning("rejected reading: %s", detail)

    def _build_sources(self) -> None:
        for i, src in enumerate(self.cfg.sources):
            if isinstance(src, CmapssSource):
                streams = cmapss_streams(src.file, src.units, src.asset_prefix,
                                         self.outbox.next_seq, src.loop)
                self.replays.append(Replay(f"cmapss-{i}", streams, src.rate, self.emit,
                                           self.stopping))
            elif isinstance(src, CsvSource):
                self.replays.append(CsvReplay(src.file, src.asset_column, src.time_column,
                                              src.rate, self.emit, self.reject, self.stopping))
            elif isinstance(src, MqttSource):
                self.local.subscribe(topics.subscription("raw", self.gateway),
                                     mqtt_input.handler(self.emit, self.reject))
            elif isinstance(src, ModbusSource):
                from edge_agent.sources.modbus import ModbusPoller  # pymodbus only when used

                name = f"modbus-{i}"
                self.pollers.append(ModbusPoller(name, src, self.emit, self.stopping,
                                                 *self._source_health(name)))
            elif isinstance(src, OpcUaSource):
                from edge_agent.sources.opcua import OpcUaReader  # asyncua only when used

                name = f"opcua-{i}"
                self.pollers.append(OpcUaReader(name, src, self.emit, self.stopping,
                                                *self._source_health(name)))

    def _source_health(self, name: str) -> tuple[Callable[[str, str], None],
                                                  Callable[[bool], None]]:
        """The callbacks an industrial source reports its failures and state through."""
        self.metrics.source_up.labels(name).set(0)
        return (lambda reason, detail: self.metrics.source_errors.labels(name, reason).inc(),
                lambda ok: self.metrics.source_up.labels(name).set(1 if ok else 0))

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self.cfg.metrics_port is not None:
            try:
                self.metrics.serve(self.cfg.metrics_port)
            except OSError as exc:
                raise OSError(exc.errno, f"metrics port {self.cfg.metrics_port}: "
                                         f"{exc.strerror}") from None
        self.local.start()
        if self.uplink is not self.local:
            self.uplink.start()
        sender = threading.Thread(target=self._send_loop, name="uplink", daemon=True)
        sender.start()
        self.updater.start()
        self.threads += [sender, self.updater, *self.pollers]
        for r in self.replays + self.pollers:
            r.start()
        log.info("agent %s started: model %s (%s via %s), %d source(s)", self.gateway,
                 self.manifest.version, self.manifest.edge.quantization, self.scorer.runtime,
                 len(self.cfg.sources))

    def replays_done(self) -> bool:
        return all(not r.is_alive() for r in self.replays)

    def drained(self) -> bool:
        return (self.replays_done() and self.queue.empty() and not self.pipeline.holding()
                and self.outbox.depth() == 0)

    def unreached_brokers(self) -> list[str]:
        """The links (host:port) never connected since the start."""
        transports = {id(self.local): self.local, id(self.uplink): self.uplink}.values()
        return [t.outage.link for t in transports if not t.ever_connected]

    def stop(self) -> None:
        self.stopping.set()
        self._publish_alerts(self.pipeline.flush())  # windows still waiting for a verdict
        for t in self.threads:
            t.join(timeout=5)
        for tr in {id(self.local): self.local, id(self.uplink): self.uplink}.values():
            if tr.connected.is_set():
                tr.publish(topics.status(self.gateway), self._status(False), retain=True).wait(2)
            tr.stop()
        self.outbox.close()

    # --- main loop -----------------------------------------------------------------------
    def run(self, until=None) -> None:
        """Process readings until stopped, or until `until()` returns True."""
        while not self.stopping.is_set():
            if until is not None and until():
                return
            try:
                first = self.queue.get(timeout=0.02 if self.pipeline.holding() else 0.2)
            except queue.Empty:
                self._apply_pending()
                self._settle()
                continue
            self._apply_pending()
            batch = [first]
            while len(batch) < 500:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            self.handle(batch)
            self._settle()

    # --- model swap ----------------------------------------------------------------------
    def _between_ticks(self, change: Callable[[], None], what: str,
                       timeout: float = 30.0) -> None:
        """Called by the updater; the main loop makes the change between two batches of
        ticks, so no window is lost or scored twice."""
        done = threading.Event()
        with self._pending_lock:
            self._pending.append((change, done))
        if not done.wait(timeout):
            raise UpdateError(f"the scoring loop did not take the {what} within "
                              f"{timeout:.0f} s")

    def _apply_pending(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, []
        for change, done in pending:
            change()
            done.set()

    def _publish_uplink(self, topic: str, payload: bytes) -> None:
        """Update reports go out on the uplink; QoS 1 lets the client resend them."""
        self.uplink.publish(topic, payload)

    def swap(self, candidate: Candidate) -> None:
        def change() -> None:
            old = self.manifest.version
            self.manifest, self.scorer = candidate.manifest, candidate.scorer
            self.pipeline.use_model(candidate.manifest, candidate.scorer, self.cfg.thresholds)
            self.metrics.model.clear()
            self.metrics.model.labels(candidate.manifest.version).set(1)
            if self.uplink.connected.is_set():
                self.uplink.publish(topics.status(self.gateway), self._status(True),
                                    retain=True)
            log.info("model swapped: %s -> %s", old, candidate.manifest.version)
        self._between_ticks(change, "new model")

    def shadow(self, candidate: Candidate | None) -> None:
        """Run `candidate` in shadow from the next tick on (None: stop the shadow model)."""
        def change() -> None:
            self.pipeline.use_shadow(candidate.scorer if candidate else None)
            self.metrics.shadow.clear()
            if candidate:
                self.metrics.shadow.labels(candidate.manifest.version).set(1)
                log.info("model %s runs in shadow beside %s", candidate.manifest.version,
                         self.manifest.version)
        if candidate is not None or self.pipeline.shadow is not None:
            self._between_ticks(change, "shadow model")

    def handle(self, readings: list[Reading]) -> None:
        done: list[Processed] = []
        for reading in readings:
            try:
                done.append(self.pipeline.process(reading))
            except Rejected as exc:
                self.reject(exc.reason, str(exc))
        with self._uplink_order:
            dropped = self.outbox.append([p.tick for p in done])  # assigns seqs, one transaction
            for p in done:
                if p.escalate:
                    self._escalate(p)
        if dropped:
            self.metrics.dropped.inc(dropped)
        self.metrics.ticks.inc(len(done))
        far = [p for p in done if p.out_of_regime]
        if far:
            self.metrics.out_of_regime.inc(len(far))
            line = self.regime_log.note(len(far), f"asset {far[0].tick.asset} at time "
                                                  f"{far[0].tick.time:g}")
            if line:
                log.warning("%s", line)
        for p in done:
            if p.score is None:
                continue
            self.metrics.scored.inc()
            self.metrics.inference.observe(p.inference_s)
            self._publish_alerts(self.pipeline.decide(p))

    def _settle(self) -> None:
        """Decide the windows held for a verdict: those answered, then those overdue."""
        if not self.pipeline.holding():
            return
        while True:
            try:
                event = self.verdict_inbox.get_nowait()
            except queue.Empty:
                break
            self._publish_alerts(self.pipeline.verdict(event.asset, event.seq,
                                                       event.probability, event.rul))
        self._publish_alerts(self.pipeline.expire())

    def _publish_alerts(self, decided: list[Processed]) -> None:
        for p in decided:
            if p.escalate and self.pipeline.gate is not None:
                self.metrics.adopted.labels(p.basis).inc()
            if p.transition:
                self._publish_alert(p)
            elif p.judged is not None and p.tick.asset not in self._shown:
                # The first decision of a quiet asset: its state retained all the same, so a
                # viewer lists every scored asset, not only those that changed state.
                self._publish_state(p)

    # --- escalation ----------------------------------------------------------------------
    def _escalate(self, p: Processed) -> None:
        """Send the window's ticks at once, ahead of the normal batch (which carries them
        too: the cloud stores each tick once). Skipped while the uplink is down; the window
        then goes up with the outbox like any other."""
        w = p.window
        if w is None or not self.uplink.connected.is_set():
            p.escalate = None  # not sent: no verdict to wait for
            return
        batch = UplinkBatch(  # an asset's seqs are consecutive: the window ends at the tick
            gateway=self.gateway, asset=p.tick.asset, first_seq=p.tick.seq - len(w.times) + 1,
            timestamps=w.times, features=tuple(self.manifest.columns), values=w.values,
            probability=w.probability, rul=w.rul, model_version=p.tick.model_version,
            escalated=True)
        self.uplink.publish(topics.escalate(self.gateway), codec.encode_uplink(batch))
        assert p.score is not None
        self.verdicts.sent(p.tick.asset, p.tick.seq,
                           p.score.probability >= self.pipeline.thresholds.decision)
        self.metrics.escalations.labels(p.escalate).inc()

    def _on_verdict(self, topic: str, payload: bytes) -> None:
        try:
            event = codec.decode_json(payload, AlertEvent)
        except ContractError as exc:
            log.warning("ignored a bad verdict on %s: %s", topic, exc)
            self.metrics.verdicts_refused.inc()
            return
        if event.kind != "verdict":
            log.warning("ignored a %s event on the verdict topic %s", event.kind, topic)
            self.metrics.verdicts_refused.inc()
            return
        outcome = self.verdicts.received(
            event.asset, event.seq, event.probability >= self.pipeline.thresholds.decision)
        if outcome is None:
            return
        if self.pipeline.gate is not None and outcome.outcome != "late":
            self.verdict_inbox.put(event)
        self.metrics.verdicts.labels(outcome.outcome).inc()
        self.metrics.verdict_latency.observe(outcome.latency)
        if outcome.outcome == "overruled":
            log.info("cloud overruled the edge on %s seq %d: p=%.3f", event.asset, event.seq,
                     event.probability)

    def _publish_state(self, p: Processed) -> None:
        self.local.publish(topics.state(self.gateway, p.tick.asset),
                           codec.encode_json(self.pipeline.asset_state(p)), retain=True)
        self._shown.add(p.tick.asset)

    def _publish_alert(self, p: Processed) -> None:
        latency = time.perf_counter() - p.reading.arrived
        event = self.pipeline.alert_event(p, latency * 1000)
        self.local.publish(topics.alert(self.gateway, p.tick.asset), codec.encode_json(event))
        self._publish_state(p)
        self.metrics.alerts.labels(event.new_state.value).inc()
        self.metrics.alert_latency.observe(latency)
        self.urgent.set()
        log.info("alert %s %s -> %s p=%.3f rul=%.0f seq=%d latency=%.1fms%s%s", p.tick.asset,
                 event.old_state.value, event.new_state.value, event.probability,
                 event.rul or 0, event.seq, event.latency_ms,
                 " (on the cloud's verdict)" if p.basis == "cloud" else "",
                 "" if self.local.connected.is_set() else
                 " (not delivered yet: the broker is unreachable)")

    # --- uplink --------------------------------------------------------------------------
    def _send_loop(self) -> None:
        ob = self.cfg.outbox
        last_flush = 0.0
        session = None  # the uplink connection the last pass ran on
        while not self.stopping.is_set():
            self.urgent.wait(timeout=max(0.05, ob.batch_max_age / 2))
            self.metrics.reconnects.set(self.local.reconnects + (
                self.uplink.reconnects if self.uplink is not self.local else 0))
            if not self.uplink.connected.is_set():
                continue
            # Compare connection counts, not the connected flag: a broker restart can come and
            # go while a send waits for its acknowledgements, and must still trigger the replay.
            if session != self.uplink.reconnects:
                session = self.uplink.reconnects
                self.uplink.publish(topics.status(self.gateway), self._status(True), retain=True)
                replayed = self.outbox.replay_recent()
                if replayed:
                    log.info("uplink (re)connected: sending the last %d acknowledged ticks "
                             "again", replayed)
            counts = self.outbox.pending_counts()
            self.metrics.outbox_depth.set(sum(counts.values()))
            due = self.urgent.is_set() or time.monotonic() - last_flush >= ob.batch_max_age
            self.urgent.clear()
            assets = [a for a, n in counts.items() if due or n >= ob.batch_max_ticks]
            if not assets:
                continue
            last_flush = time.monotonic()
            try:
                self._send(assets)
            except Exception:  # the uplink thread must outlive any one failed send
                log.exception("uplink send failed; the ticks stay in the outbox")
                time.sleep(1)

    def _send(self, assets: list[str]) -> None:
        """Send every pending tick of `assets`, a window of batches in flight at a time."""
        after = {a: -1 for a in assets}
        while assets and not self.stopping.is_set():
            in_flight: list[tuple[PendingBatch, Published]] = []
            for asset in list(assets):
                with self._uplink_order:
                    batch = self.outbox.take(asset, after[asset],
                                             self.cfg.outbox.batch_max_ticks)
                    if batch is None:
                        assets.remove(asset)
                        continue
                    after[asset] = batch.last_seq
                    payload = codec.encode_uplink(UplinkBatch(
                        gateway=self.gateway, asset=asset, first_seq=batch.first_seq,
                        timestamps=batch.times, features=tuple(self.manifest.columns),
                        values=batch.values, probability=batch.probability, rul=batch.rul,
                        model_version=batch.model_version, shadow_version=batch.shadow_version,
                        shadow_probability=batch.shadow_probability,
                        shadow_rul=batch.shadow_rul))
                    in_flight.append((batch, self.uplink.publish(topics.uplink(self.gateway),
                                                                 payload)))
            for batch, handle in in_flight:
                if not handle.wait(ACK_TIMEOUT):
                    log.warning("uplink batch %s %d..%d not acknowledged; will resend",
                                batch.asset, batch.first_seq, batch.last_seq)
                    return
                self.outbox.ack(batch.asset, batch.first_seq, batch.last_seq)
                self.metrics.batches.inc()
                self.metrics.uplinked.inc(len(batch.times))
