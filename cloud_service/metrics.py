"""Prometheus metrics of one service instance (its own registry, so tests can run several)."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cloud_service.deadletters import REASONS
from contract.payloads import AlertState

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.messages = Counter("pdm_cloud_messages", "MQTT messages received, by topic kind "
                                "and outcome (stored, dead_letter, ignored)",
                                ["kind", "outcome"], registry=r)
        self.ticks_received = Counter("pdm_cloud_ticks_received", "ticks in accepted batches",
                                      registry=r)
        self.rows_inserted = Counter("pdm_cloud_rows_inserted", "rows written, by table",
                                     ["table"], registry=r)
        self.duplicate_ticks = Counter("pdm_cloud_duplicate_ticks",
                                       "ticks already stored (redelivered, or sent ahead in an "
                                       "escalated window), ignored", registry=r)
        self.escalated_ticks = Counter("pdm_cloud_escalated_ticks",
                                       "ticks received in escalated windows: copies sent ahead "
                                       "of their batch so the cloud can judge the window at once",
                                       registry=r)
        self.dead_letters = Counter("pdm_cloud_dead_letters", "refused payloads, by reason",
                                    ["reason"], registry=r)
        for reason in REASONS:
            self.dead_letters.labels(reason)
        self.commit_seconds = Histogram("pdm_cloud_ingest_commit_seconds",
                                        "time to write (and then acknowledge) one group of "
                                        "messages", buckets=LATENCY_BUCKETS, registry=r)
        self.ingest_queue = Gauge("pdm_cloud_ingest_queue", "messages received, not yet "
                                  "committed", registry=r)
        self.broker_connected = Gauge("pdm_cloud_broker_connected", "1 while connected",
                                      registry=r)
        self.reconnects = Counter("pdm_cloud_broker_reconnects", "connections after the first",
                                  registry=r)
        self.batch_size = Histogram("pdm_cloud_scoring_batch_size", "windows per model call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.model_seconds = Histogram("pdm_cloud_scoring_model_seconds",
                                       "seconds per model call", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.scoring_latency = Histogram("pdm_cloud_scoring_latency_seconds",
                                         "seconds from a tick's arrival to its window's score",
                                         buckets=LATENCY_BUCKETS + (10, 30, 60), registry=r)
        self.windows_scored = Counter("pdm_cloud_windows_scored", "windows scored", registry=r)
        self.windows_unscorable = Counter("pdm_cloud_windows_unscorable",
                                          "complete windows the model cannot score (features "
                                          "missing), recorded with the reason", registry=r)
        self.out_of_regime = Counter("pdm_cloud_out_of_regime",
                                     "ticks ending a scored window whose operational settings "
                                     "are far from every regime of the model (scored with the "
                                     "nearest regime's statistics)", registry=r)
        self.backlog = Gauge("pdm_cloud_scoring_backlog",
                             "complete windows waiting to be scored", registry=r)
        self.verdicts = Counter("pdm_cloud_verdicts", "verdicts on escalated windows: the "
                                "edge's decision agreed or overruled", ["outcome"], registry=r)
        self.alerts = Counter("pdm_cloud_alerts", "cloud alert transitions, by new state",
                              ["state"], registry=r)
        self.store_errors = Counter("pdm_cloud_store_errors", "store operations that failed "
                                    "(connection lost, database down, disk full) and were "
                                    "retried, by caller", ["caller"], registry=r)
        for caller in ("ingest", "scoring", "readiness", "retention", "webhooks"):
            self.store_errors.labels(caller)
        self.store_up = Gauge("pdm_cloud_store_up", "1 while the store took a write at the "
                              "last readiness check", registry=r)
        self.retention_removed = Counter("pdm_cloud_retention_removed", "rows (SQLite) or day "
                                         "partitions (PostgreSQL) removed by retention",
                                         registry=r)
        self.assets_owned = Gauge("pdm_cloud_assets_owned", "assets this replica scores",
                                  registry=r)
        self.asset_states = Gauge("pdm_cloud_assets_by_state", "assets this replica scores, "
                                  "by cloud alert state (the fleet: the sum over replicas)",
                                  ["state"], registry=r)
        for state in AlertState:
            self.asset_states.labels(state.value)
        self.replicas_live = Gauge("pdm_cloud_replicas_live", "replicas holding a live lease",
                                   registry=r)
        self.leader = Gauge("pdm_cloud_leader", "1 while this replica holds the leader lease",
                            registry=r)
        self.scores_refused = Counter("pdm_cloud_scores_refused", "window scores not stored "
                                      "because another replica had taken the asset over",
                                      registry=r)
        self.windows_scored_twice = Counter(
            "pdm_cloud_windows_scored_twice", "windows whose prediction another scorer had "
            "stored already (ownership should make this 0)", registry=r)
        self.window_gaps_skipped = Counter("pdm_cloud_window_gaps_skipped", "holes in an "
                                           "asset's ticks given up on after scoring.gap_wait",
                                           registry=r)
        self.webhook_deliveries = Counter(
            "pdm_cloud_webhook_deliveries", "webhook delivery attempts, by webhook and outcome "
            "(delivered; failed: retried later; gave_up: failing past give_up_after, or "
            "unsendable)", ["webhook", "outcome"], registry=r)
        self.webhook_failures = Counter(
            "pdm_cloud_webhook_failures", "failed webhook attempts, by webhook and reason "
            "(http_<status>, timeout, connect, unsendable)", ["webhook", "reason"], registry=r)
        self.webhook_queue = Gauge("pdm_cloud_webhook_queue_depth", "webhook deliveries "
                                   "queued in the store, not yet delivered nor given up (the "
                                   "whole fleet's queue, as this replica last saw it)",
                                   registry=r)
        self.webhook_seconds = Histogram("pdm_cloud_webhook_request_seconds",
                                         "seconds per webhook POST, answered or not",
                                         ["webhook"], buckets=LATENCY_BUCKETS + (10, 30),
                                         registry=r)
        self.drift_psi = Gauge("pdm_cloud_drift_psi", "input drift: the largest PSI of each "
                               "feature over the assets this replica scores (contract/drift.py)",
                               ["feature"], registry=r)
        self.assets_drifting = Gauge("pdm_cloud_assets_drifting", "assets this replica scores "
                                     "whose inputs drift from the training data", registry=r)
        self.drift_events = Counter("pdm_cloud_drift_events", "assets crossing the drift "
                                    "threshold (raised) or coming back under it (cleared)",
                                    ["kind"], registry=r)
        for kind in ("raised", "cleared"):
            self.drift_events.labels(kind)
        self.drift_checks = Counter("pdm_cloud_drift_checks", "asset drift checks made",
                                    registry=r)
        self.drift_check_seconds = Histogram("pdm_cloud_drift_check_seconds",
                                             "seconds per drift step (up to drift.batch assets: "
                                             "read, compare, store)",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.ui_sign_ins = Counter("pdm_cloud_ui_sign_ins", "web UI sign-ins, by result "
                                   "(accepted, refused: a wrong or empty token)", ["result"],
                                   registry=r)
        self.model_loaded = Gauge("pdm_cloud_model_info", "the model the cloud scores with",
                                  ["version"], registry=r)

    def count_asset_states(self, states: Iterable[str]) -> None:
        counts = collections.Counter(states)
        for state in AlertState:
            self.asset_states.labels(state.value).set(counts.get(state.value, 0))

    def track_backlog(self, fn: Callable[[], float]) -> None:
        self.backlog.set_function(fn)

    def render(self) -> bytes:
        return generate_latest(self.registry)
