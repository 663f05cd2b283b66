"""Prometheus metrics of the agent (one registry per agent, so several can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class AgentMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ticks = Counter("pdm_edge_ticks", "Readings accepted as ticks", registry=r)
        self.rejected = Counter("pdm_edge_rejected_readings", "Readings refused, by reason",
                                ["reason"], registry=r)
        self.out_of_regime = Counter(
            "pdm_edge_out_of_regime", "Ticks whose operational settings are far from every "
            "regime of the model (scored with the nearest regime's statistics)", registry=r)
        self.scored = Counter("pdm_edge_windows_scored", "Windows scored by the edge model",
                              registry=r)
        self.inference = Histogram(
            "pdm_edge_inference_seconds", "Edge model time per window", registry=r,
            buckets=(5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2))
        self.alert_latency = Histogram(
            "pdm_edge_alert_latency_seconds", "Tick arrival to alert publish", registry=r,
            buckets=(1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.25, 1.0))
        self.alerts = Counter("pdm_edge_alerts", "Alert transitions, by new state", ["state"],
                              registry=r)
        self.outbox_depth = Gauge("pdm_edge_outbox_depth", "Ticks waiting in the outbox",
                                  registry=r)
        self.dropped = Counter("pdm_edge_outbox_dropped_ticks",
                               "Ticks dropped to keep the outbox within its disk budget",
                               registry=r)
        self.batches = Counter("pdm_edge_uplink_batches", "Uplink batches acknowledged",
                               registry=r)
        self.uplinked = Counter("pdm_edge_uplink_ticks", "Ticks acknowledged by the uplink broker",
                                registry=r)
        self.reconnects = Gauge("pdm_edge_reconnects", "Reconnections to the brokers", registry=r)
        self.broker_up = Gauge("pdm_edge_broker_up", "1 while connected, 0 while the broker is "
                               "unreachable, by role (broker: local, uplink: the cloud's)",
                               ["role"], registry=r)
        self.broker_down = Gauge("pdm_edge_broker_down_seconds", "How long the broker has been "
                                 "unreachable (0 while connected)", ["role"], registry=r)
        self.source_up = Gauge("pdm_edge_source_up", "1 while an industrial source (Modbus, "
                               "OPC UA) reads its device, 0 while it cannot", ["source"],
                               registry=r)
        self.source_errors = Counter("pdm_edge_source_errors", "Failed reads of industrial "
                                     "sources, by source and reason (connect, timeout, "
                                     "exception, bad_value, ...)", ["source", "reason"],
                                     registry=r)
        self.escalations = Counter("pdm_edge_escalations", "Windows sent to the cloud for a "
                                   "verdict, by reason", ["reason"], registry=r)
        self.verdicts = Counter("pdm_edge_cloud_verdicts", "Cloud verdicts on escalated windows: "
                                "agreed, overruled (other decision), late (after the deadline)",
                                ["outcome"], registry=r)
        self.verdicts_refused = Counter(
            "pdm_edge_verdicts_refused", "Messages on the verdict topic that are no verdict "
            "(malformed, or another kind of event)", registry=r)
        self.verdict_latency = Histogram(
            "pdm_edge_verdict_latency_seconds", "Escalation sent to cloud verdict received",
            registry=r, buckets=(5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
        self.adopted = Counter(
            "pdm_edge_escalated_decisions", "Escalated windows decided with adopt_cloud_verdict "
            "on, by basis: cloud (verdict in time) or edge (deadline passed)", ["basis"],
            registry=r)
        self.updates_refused = Counter(
            "pdm_edge_model_updates_refused", "Model announcements and updates refused, by "
            "reason (bad-signature, revoked-key, expired, replayed, downgrade, url, hash, "
            "bundle, malformed, ...)", ["reason"], registry=r)
        self.model = Gauge("pdm_edge_model_info", "Active model version", ["version"], registry=r)
        self.shadow = Gauge("pdm_edge_shadow_model_info", "Model scoring in shadow (never "
                            "alerting), if any", ["version"], registry=r)

    def serve(self, port: int) -> None:
        start_http_server(port, addr="0.0.0.0", registry=self.registry)
