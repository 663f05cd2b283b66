"""The agent's functional core: reading -> checked tick -> window -> score -> alert decision.

No sockets and no database here; the shell (`edge_agent.agent`) feeds readings in, commits the
returned ticks to the outbox and publishes the returned alerts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from contract.alerting import AlertMachine, Transition
from contract.manifest import Manifest, Thresholds
from contract.payloads import AlertEvent, AlertState, AssetState
from contract.preprocess import Normaliser
from edge_agent.escalation import escalation_reason
from edge_agent.outbox import OutboxTick
from edge_agent.readings import Reading, ReadingChecker
from edge_agent.scorer import Score, Scorer
from edge_agent.verdict_gate import CloudScore, Released, VerdictGate
from edge_agent.windows import AssetWindow, WindowCopy


@dataclass
class Processed:
    reading: Reading
    tick: OutboxTick
    score: Score | None
    transition: Transition | None = None
    inference_s: float = 0.0
    escalate: str | None = None  # why the window goes to the cloud at once
    window: WindowCopy | None = None  # the window's ticks, when escalated
    judged: Score | None = None  # the score the alert machine decided on
    basis: str = "edge"  # whose score that was: "edge", or "cloud" when its verdict was adopted
    out_of_regime: bool = False  # the tick's settings are far from every operating regime


@dataclass
class AssetStatus:
    machine: AlertMachine
    window: AssetWindow
    since: float = field(default_factory=time.time)


class Pipeline:
    def __init__(self, gateway: str, manifest: Manifest, scorer: Scorer,
                 thresholds: Thresholds | None = None, escalation_band: float | None = None,
                 escalate_heads: bool = True, adopt_deadline: float | None = None) -> None:
        """escalation_band None: never escalate. adopt_deadline: decide escalated windows on
        the cloud's verdict when it comes within this many seconds (None: on the edge's own)."""
        self.gateway = gateway
        self.gate: VerdictGate[Processed] | None = (
            VerdictGate(adopt_deadline) if adopt_deadline is not None and escalation_band
            is not None else None)
        self.escalation_band = escalation_band
        self.escalate_heads = escalate_heads
        self.manifest = manifest
        self.scorer = scorer
        self.thresholds = thresholds or manifest.thresholds
        self.model_version = manifest.version
        self.checker = ReadingChecker(manifest.columns)
        self.normaliser = Normaliser.of(manifest)  # flags ticks out of every regime
        self.assets: dict[str, AssetStatus] = {}
        self.shadow: Scorer | None = None  # scored beside the active model, never alerting

    def use_model(self, manifest: Manifest, scorer: Scorer,
                  thresholds: Thresholds | None = None) -> None:
        """Switch to another model with the same features and window; windows and alert states
        carry over, so the next tick is scored by the new model and no window twice."""
        if (manifest.columns, manifest.window) != (self.manifest.columns, self.manifest.window):
            raise ValueError("a swapped-in model must use the same features and window")
        self.manifest, self.scorer = manifest, scorer
        self.normaliser = Normaliser.of(manifest)
        self.model_version = manifest.version
        self.thresholds = thresholds or manifest.thresholds
        for status in self.assets.values():
            status.machine.thresholds = self.thresholds

    def use_shadow(self, scorer: Scorer | None) -> None:
        """Run `scorer` beside the active model from the next tick on (None: stop)."""
        if scorer is not None and (scorer.manifest.columns, scorer.manifest.window) != (
                self.manifest.columns, self.manifest.window):
            raise ValueError("a shadow model must use the same features and window")
        self.shadow = scorer

    def held_windows(self, limit: int = 200) -> list[np.ndarray]:
        """Copies of the full raw windows held now (for a new model's self-test)."""
        full = [s.window.view().copy() for s in self.assets.values() if s.window.full]
        return full[:limit]

    def process(self, reading: Reading) -> Processed:
        """Check, window and score one reading (`decide` judges the score). Raises `Rejected`
        for a bad reading."""
        row = self.checker.check(reading)
        status = self.assets.get(reading.asset)
        if status is None:
            status = self.assets[reading.asset] = AssetStatus(
                AlertMachine(self.thresholds), AssetWindow(self.manifest))
        status.window.push(row, float(reading.time))
        tick = OutboxTick(reading.asset, float(reading.time), row,
                          model_version=self.model_version)
        far = self.normaliser.out_of_regime(row)
        if self.shadow is not None:
            tick.shadow_version = self.shadow.manifest.version
        if not status.window.full:
            return Processed(reading, tick, None, None, out_of_regime=far)
        t0 = time.perf_counter()
        score = self.scorer.score(status.window.view())
        elapsed = time.perf_counter() - t0
        tick.probability, tick.rul = score.probability, score.rul
        status.window.score_last(score.probability, score.rul)
        if self.shadow is not None:
            shadow = self.shadow.score(status.window.view())
            tick.shadow_probability, tick.shadow_rul = shadow.probability, shadow.rul
        done = Processed(reading, tick, score, inference_s=elapsed, out_of_regime=far)
        if self.escalation_band is not None:
            done.escalate = escalation_reason(score.probability, score.rul, self.manifest,
                                              self.escalation_band, self.escalate_heads)
            if done.escalate:
                done.window = status.window.copy()
        return done

    # --- alert decisions, in window order per asset ----------------------------------------
    def decide(self, p: Processed) -> list[Processed]:
        """Feed a scored window to its asset's alert machine; returns the windows decided now
        (with their transitions), oldest first. With a gate, an escalated window and those
        after it wait for the cloud's verdict (see `verdict`, `expire`)."""
        if p.score is None:
            return []
        if self.gate is None:
            return self._judge([Released(p, None)])
        return self._judge(self.gate.offer(p.tick.asset, p.tick.seq, p, p.escalate is not None))

    def verdict(self, asset: str, seq: int, probability: float,
                rul: float | None) -> list[Processed]:
        if self.gate is None:
            return []
        return self._judge(self.gate.verdict(asset, seq, CloudScore(probability, rul)))

    def expire(self) -> list[Processed]:
        return self._judge(self.gate.expire()) if self.gate else []

    def flush(self) -> list[Processed]:
        return self._judge(self.gate.flush()) if self.gate else []

    def holding(self) -> int:
        return len(self.gate) if self.gate else 0

    def _judge(self, released: list[Released[Processed]]) -> list[Processed]:
        for r in released:
            p, status = r.item, self.assets[r.item.tick.asset]
            assert p.score is not None
            if r.cloud is None:
                p.judged = p.score
            else:
                rul = p.score.rul if r.cloud.rul is None else r.cloud.rul
                p.judged, p.basis = Score(r.cloud.probability, rul), "cloud"
            p.transition = status.machine.update(p.judged.probability, p.judged.rul)
            if p.transition:
                status.since = time.time()
        return [r.item for r in released]

    def alert_event(self, p: Processed, latency_ms: float) -> AlertEvent:
        assert p.transition and p.judged
        return AlertEvent(
            source="edge", basis=p.basis, gateway=self.gateway, asset=p.tick.asset,
            old_state=p.transition.old, new_state=p.transition.new,
            probability=p.judged.probability, rul=p.judged.rul,
            thresholds=self.thresholds.model_dump(exclude_none=True, exclude={"dwell"}),
            model_version=self.model_version, seq=p.tick.seq, tick_time=p.tick.time,
            published_at=time.time(), latency_ms=latency_ms)

    def asset_state(self, p: Processed) -> AssetState:
        assert p.judged
        status = self.assets[p.tick.asset]
        return AssetState(
            gateway=self.gateway, asset=p.tick.asset, state=status.machine.state,
            probability=p.judged.probability, rul=p.judged.rul, model_version=self.model_version,
            seq=p.tick.seq, tick_time=p.tick.time, since=status.since)

    def states(self) -> dict[str, AlertState]:
        return {a: s.machine.state for a, s in self.assets.items()}
