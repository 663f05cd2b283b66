"""One service instance: store, model, scorer and MQTT consumer, started and stopped together
(by the HTTP app's lifespan), and the readiness judgement over them."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from cloud_service.config import CloudConfig
from cloud_service.ingest import Consumer
from cloud_service.metrics import Metrics
from cloud_service.model import ModelError, load_verified
from cloud_service.notifications import WebhookSender
from cloud_service.registry import Registry
from cloud_service.rollouts import Rollouts
from cloud_service.scoring import Scorer
from cloud_service.store import Inserted, open_store
from contract.bundle import load_private_key
from contract.errors import ContractError
from contract.manifest import Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reasons: list[str]


class Service:
    def __init__(self, cfg: CloudConfig) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.store = open_store(cfg.store)
        self.metrics.store_up.set(1)
        self.registry = Registry(cfg.registry.path, self.store, cfg.bundle.trusted_keys,
                                 cfg.registry.max_upload_bytes)
        self.manifest: Manifest | None = None
        self.scorer: Scorer | None = None
        self.model_error: str | None = "model not loaded yet"
        self.consumer = Consumer(cfg, self.store, self.metrics, on_inserted=self._on_inserted)
        key = cfg.rollouts.signing_key
        self.rollouts = Rollouts(self.store, self.publish_retained,
                                 load_private_key(key) if key else None,
                                 cfg.rollouts.announcement_ttl)
        # Alert webhooks: queued by the scorer with each alert, sent by this worker.
        self.webhooks = (WebhookSender(self.store, cfg.notifications, self.metrics,
                                       replica=cfg.client_id)
                         if cfg.notifications.webhooks else None)
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._retention: threading.Thread | None = None

    @property
    def checks_drift(self) -> bool:
        """Whether this service compares its assets' inputs with the training data."""
        return self.scorer is not None and self.scorer.drift is not None

    def start(self) -> None:
        """Load the model (a bad bundle keeps the service up but not ready: ticks are still
        stored and scored once a good bundle is configured), then start scoring and ingest."""
        try:
            manifest, model = load_verified(self.cfg.bundle.path, self.cfg.bundle.trusted_keys)
            self.registry.register_folder(self.cfg.bundle.path, manifest)
        except (ModelError, ContractError, OSError) as exc:
            self.model_error = str(exc)
            log.error("no model: %s", exc)
        else:
            self.manifest, self.model_error = manifest, None
            self.metrics.model_loaded.labels(manifest.version).set(1)
            sc = self.cfg.scoring
            self.scorer = Scorer(self.store, model, manifest, self.metrics,
                                 publish=self.consumer.publish, batch_max=sc.batch_max,
                                 max_delay=sc.max_delay, replica=self.cfg.client_id,
                                 lease_seconds=sc.lease_seconds, gap_wait=sc.gap_wait,
                                 scan_interval=sc.scan_interval,
                                 drift=self.cfg.drift.options(), notifier=self.webhooks)
            self.scorer.start()
        if self.webhooks is not None:  # also without a model: it drains what is queued
            self.webhooks.start()
        self.consumer.start()
        if self.cfg.store.retention_days is not None:
            self._retention = threading.Thread(target=self._run_retention, name="retention",
                                               daemon=True)
            self._retention.start()
        self._started.set()

    def stop(self) -> None:
        """Stop scoring (handing the assets back), then ingest: with other replicas live, the
        uplink is handed over to them and the broker session dropped (a scale-down strands
        nothing); as the last replica, the session is kept so the broker queues for our
        return."""
        self._stopping.set()
        if self._retention:
            self._retention.join(30)
        if self.scorer:
            self.scorer.stop()
        if self.webhooks:
            self.webhooks.stop()
        try:
            others = self.store.live_replicas(exclude=self.cfg.client_id)
        except Exception as exc:
            others = 0
            log.warning("cannot tell whether other replicas are live (%s); keeping the broker "
                        "session", exc)
        if others:
            self.consumer.hand_over()
        self.consumer.stop()
        self.store.close()

    def publish_retained(self, topic: str, payload: bytes, timeout: float = 10) -> None:
        """Publish retained at QoS 1 and wait for the broker's acknowledgement."""
        if not self.consumer.connected.is_set():
            raise ConnectionError("not connected to the MQTT broker")
        info = self.consumer.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"no acknowledgement within {timeout:.0f} s")

    def _on_inserted(self, inserted: list[Inserted]) -> None:
        if self.scorer is not None:
            self.scorer.notify(inserted)

    def apply_retention(self, now: float | None = None) -> int:
        """Remove ticks and predictions older than `store.retention_days` (by tick time)."""
        days = self.cfg.store.retention_days
        if days is None:
            return 0
        cutoff = (time.time() if now is None else now) - days * 86_400
        removed = self.store.drop_before(cutoff)
        self.metrics.retention_removed.inc(removed)
        if removed:
            log.info("retention removed %d %s older than %.1f days", removed,
                     "rows" if self.store.where.startswith("SQLite") else "partitions", days)
        return removed

    def _run_retention(self) -> None:
        """Retention is a fleet-wide job: only the replica holding the leader lease runs it (a
        replica without a model holds no lease and leaves it to the others)."""
        while not self._stopping.is_set():
            try:
                if self.scorer is not None and self.scorer.leader:
                    self.apply_retention()
            except Exception:
                self.metrics.store_errors.labels("retention").inc()
                log.exception("retention pass failed; trying again later")
            self._stopping.wait(self.cfg.store.retention_interval)

    def readiness(self) -> Readiness:
        reasons = []
        if not self.consumer.connected.is_set():
            where = f"{self.cfg.broker.host}:{self.cfg.broker.port}"
            extra = f" ({self.consumer.last_error})" if self.consumer.last_error else ""
            reasons.append(f"not connected to the MQTT broker at {where}{extra}")
        if self.consumer.store_error:
            reasons.append(self.consumer.store_error)
        try:
            self.store.check_writable()
            self.metrics.store_up.set(1)
        except Exception as exc:
            self.metrics.store_up.set(0)
            self.metrics.store_errors.labels("readiness").inc()
            reasons.append(f"store not writable ({self.store.where}): {exc}")
        if self.model_error:
            reasons.append(f"model not loaded: {self.model_error}")
        elif self.scorer and self.scorer.last_error:
            reasons.append(f"scoring is failing: {self.scorer.last_error}")
        return Readiness(not reasons, reasons)
