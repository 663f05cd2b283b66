"""Batched cloud scoring in a background thread.

Ingest tells the scorer which seq ranges it stored; the scorer turns them into complete windows
not yet scored (`windows.py`), rebuilds those windows from the stored ticks, normalises them
per the manifest and runs the float model once per batch across assets. Each prediction is
stored with the edge's score of the same window and their difference. An alert machine per
asset (fed in seq order) turns the scores into cloud alert events, which are stored and
published. Nothing is dropped: after a restart the windows still missing a prediction are
found again in the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from cloud_service.metrics import Metrics
from cloud_service.store import (
    AlertRow,
    AssetKey,
    AssetScore,
    Inserted,
    PredictionRow,
    ScoreWrite,
    ScoringStore,
    StoreError,
    WindowTicks,
)
from cloud_service.windows import (
    FeatureMap,
    PendingWindows,
    assemble_windows,
    candidate_range,
    complete_window_ends,
    disagreement,
    ticks_needed,
)
from contract import codec, topics
from contract.alerting import AlertMachine
from contract.manifest import Manifest
from contract.payloads import AlertEvent, AlertState

log = logging.getLogger(__name__)
BatchModel = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
Publish = Callable[[str, bytes], object]


class Scorer:
    def __init__(self, store: ScoringStore, model: BatchModel, manifest: Manifest, metrics: Metrics,
                 publish: Publish, batch_max: int = 512, max_delay: float = 0.05,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.model = model
        self.manifest = manifest
        self.metrics = metrics
        self.publish = publish
        self.batch_max = batch_max
        self.max_delay = max_delay
        self.clock = clock
        self.window = manifest.window
        self.pending = PendingWindows()
        self._in_flight = 0
        self._dirty: dict[AssetKey, list[tuple[int, int]]] = defaultdict(list)
        self._urgent: list[tuple[AssetKey, int]] = []  # escalated windows awaiting a verdict
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._oldest: float | None = None
        self._machines: dict[AssetKey, AlertMachine] = {}
        self._fed: dict[AssetKey, int] = {}
        self._since: dict[AssetKey, float] = {}
        self._feature_maps: dict[int, FeatureMap] = {}
        self.recovered = threading.Event()
        self.last_error: str | None = None
        thresholds = manifest.thresholds.model_dump()
        self._thresholds = {k: float(v) for k, v in thresholds.items() if v is not None}
        metrics.track_backlog(self.backlog)

    # -- interface for ingest and the service ----------------------------------------------

    def notify(self, inserted: list[Inserted]) -> None:
        """Called after ingest committed new ticks. An escalated batch asks for an immediate
        verdict on the window it ends with; its windows are scored for the record when the
        normal batch carrying the same ticks arrives, so the alert machine sees them in order.
        A normal batch is looked at even when it added nothing (an escalation may have stored
        its ticks first); windows already predicted are skipped."""
        with self._cond:
            for item in inserted:
                if item.escalated:
                    self._urgent.append((item.key, item.last_seq))
                    continue
                lo, hi = candidate_range(item.first_seq, item.last_seq, self.window)
                if lo <= hi:
                    self._dirty[item.key].append((lo, hi))
            self._cond.notify()

    def backlog(self) -> int:
        """Complete windows known and not yet scored (including the batch being scored)."""
        return len(self.pending) + self._in_flight

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="scorer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify()
        if self._thread:
            self._thread.join(timeout)

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                if not self.recovered.is_set():
                    self.recover()
                self.step(wait=True)
                self.last_error = None
            except Exception as exc:  # keep scoring; the windows stay pending in the store
                if isinstance(exc, StoreError):
                    # The alert machines may have moved past what was committed, and the
                    # windows of the failed batch left the queue: start again from the store.
                    self.metrics.store_errors.labels("scoring").inc()
                    self.recovered.clear()
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("scoring failed; retrying")
                self._stopping.wait(1.0)

    def recover(self) -> None:
        """Queue every complete window in the store that has no prediction yet, and restore
        each asset's alert state."""
        for key, (state, seq, since) in self.store.asset_scores().items():
            self._machines[key] = AlertMachine(self.manifest.thresholds, AlertState(state))
            self._fed[key] = seq
            if since is not None:
                self._since[key] = since
        for key, seqs in self.store.unpredicted_ticks(self.window - 1):
            # Runs of consecutive seqs become end ranges; each end is checked for completeness.
            breaks = np.flatnonzero(np.diff(seqs) != 1)
            starts = np.concatenate([[0], breaks + 1])
            stops = np.concatenate([breaks, [len(seqs) - 1]])
            for a, b in zip(starts, stops, strict=True):
                self._add_ends(key, int(seqs[a]), int(seqs[b]))
        self.recovered.set()
        if len(self.pending):
            log.info("found %d windows to score from before the start", len(self.pending))

    def step(self, wait: bool = False) -> int:
        """Answer escalations, expand new ticks into windows and score one batch. Returns
        windows scored."""
        self.answer_escalations()
        self._expand()
        if wait:
            with self._cond:
                if not len(self.pending) and not self._dirty and not self._urgent:
                    self._cond.wait(0.5)
            self.answer_escalations()
            self._expand()
            deadline = (self._oldest or self.clock()) + self.max_delay
            while (len(self.pending) < self.batch_max and not self._stopping.is_set()
                   and self.clock() < deadline):
                with self._cond:
                    if not self._dirty and not self._urgent:
                        self._cond.wait(max(0.0, deadline - self.clock()))
                self.answer_escalations()  # never held back by a batch filling up
                self._expand()
        if not len(self.pending):
            return 0
        taken = self.pending.take(self.batch_max)
        self._in_flight = sum(len(v) for v in taken.values())
        try:
            return self._score(taken)
        finally:
            self._in_flight = 0
            self._oldest = self.clock() - self.max_delay if len(self.pending) else None

    def drain(self) -> int:
        """Score everything known now (for tests, the benchmark and shutdown)."""
        if not self.recovered.is_set():
            self.recover()
        total = 0
        while True:
            n = self.step()
            if not n and not len(self.pending) and not self._dirty:
                return total
            total += n

    def _expand(self) -> None:
        with self._cond:
            dirty, self._dirty = self._dirty, defaultdict(list)
        for key, ranges in dirty.items():
            ranges.sort()
            lo, hi = ranges[0]
            for a, b in ranges[1:]:
                if a <= hi + 1:
                    hi = max(hi, b)
                else:
                    self._add_ends(key, lo, hi)
                    lo, hi = a, b
            self._add_ends(key, lo, hi)

    def _add_ends(self, key: AssetKey, lo: int, hi: int) -> None:
        """Queue the complete, unscored windows ending in lo..hi."""
        t_lo, t_hi = ticks_needed(lo, hi, self.window)
        seqs = self.store.tick_seqs(key, t_lo, t_hi)
        ends = complete_window_ends(seqs, self.window, lo, hi)
        if not len(ends):
            return
        done = self.store.predicted_seqs(key, int(ends[0]), int(ends[-1]))
        new = [int(e) for e in ends if int(e) not in done]
        if new and self.pending.add(key, new) and self._oldest is None:
            self._oldest = self.clock()

    # -- one batch -------------------------------------------------------------------------

    def _feature_map(self, feature_set: int) -> FeatureMap:
        fm = self._feature_maps.get(feature_set)
        if fm is None:
            fm = FeatureMap.build(self.store.feature_set(feature_set), self.manifest.features)
            self._feature_maps[feature_set] = fm
        return fm

    def _rows_in_model_order(self, t: WindowTicks) -> tuple[np.ndarray, list[str | None]]:
        """The stored rows reordered to the manifest's features; per row, None or why the
        model cannot use it."""
        rows = np.zeros((len(t.seqs), len(self.manifest.features)), np.float32)
        problems: list[str | None] = [None] * len(t.seqs)
        for fs in np.unique(t.feature_sets):
            at = np.flatnonzero(t.feature_sets == fs)
            fm = self._feature_map(int(fs))
            if fm.index is None:
                why = f"ticks lack feature(s) the model needs: {', '.join(fm.missing)}"
                for i in at:
                    problems[i] = why
                continue
            raw = np.frombuffer(b"".join(t.values[i] for i in at), "<f4").reshape(len(at), -1)
            rows[at] = raw[:, fm.index]
        return rows, problems

    def _score(self, taken: dict[AssetKey, list[int]]) -> int:
        w = self.window
        inputs: list[np.ndarray] = []
        plan: list[tuple[AssetKey, WindowTicks, list[int], list[int]]] = []
        unusable: list[tuple[AssetKey, WindowTicks, int, str]] = []
        for key, ends in taken.items():
            t = self.store.window_ticks(key, ends[0] - w + 1, ends[-1])
            rows, problems = self._rows_in_model_order(t)
            good: list[int] = []
            positions: list[int] = []
            for end in ends:
                last = int(np.searchsorted(t.seqs, end))
                why = next((p for p in problems[last - w + 1:last + 1] if p), None)
                if why:
                    unusable.append((key, t, last, why))
                else:
                    good.append(end)
                    positions.append(last)
            if good:
                inputs.append(assemble_windows(t.seqs, rows, good, self.manifest))
                plan.append((key, t, good, positions))
        scored_at = self.clock()
        prob = rul = np.empty(0, np.float32)
        if inputs:
            x = np.concatenate(inputs)
            t0 = time.perf_counter()
            prob, rul = self.model(x)
            self.metrics.model_seconds.observe(time.perf_counter() - t0)
            self.metrics.batch_size.observe(len(x))
            scored_at = self.clock()
        write = ScoreWrite()
        latest: dict[AssetKey, AssetScore] = {}
        events: list[AlertEvent] = []
        i = 0
        version = self.manifest.version
        for key, t, good, positions in plan:
            for end, last in zip(good, positions, strict=True):
                p, r = float(prob[i]), float(rul[i])
                i += 1
                ep, er = t.edge_probability[last], t.edge_rul[last]
                write.predictions.append(PredictionRow(
                    gateway=key[0], asset=key[1], seq=end, tick_time=float(t.times[last]),
                    probability=p, rul=r, edge_probability=ep, edge_rul=er,
                    diff=disagreement(p, ep), rul_diff=disagreement(r, er),
                    model_version=version, edge_model_version=t.edge_model[last],
                    scored_at=scored_at))
                arrived = float(t.received_at[last - w + 1:last + 1].max())
                self.metrics.scoring_latency.observe(max(0.0, scored_at - arrived))
                judged = self._judge(key, end, p, r, float(t.times[last]), arrived, write)
                if judged is not None:
                    latest[key] = judged[0]
                    if judged[1] is not None:
                        events.append(judged[1])
        write.assets = list(latest.values())
        for key, t, last, why in unusable:
            write.predictions.append(PredictionRow(
                gateway=key[0], asset=key[1], seq=int(t.seqs[last]),
                tick_time=float(t.times[last]), probability=None, rul=None,
                edge_probability=t.edge_probability[last], edge_rul=t.edge_rul[last],
                diff=None, rul_diff=None, model_version=version,
                edge_model_version=t.edge_model[last], scored_at=scored_at, error=why))
        self.store.write_scores(write)
        self.metrics.windows_scored.inc(i)
        if unusable:
            self.metrics.windows_unscorable.inc(len(unusable))
            log.warning("%d window(s) cannot be scored: %s", len(unusable), unusable[0][3])
        for event in events:
            self.metrics.alerts.labels(event.new_state.value).inc()
            try:
                self.publish(topics.cloud_alert(event.gateway, event.asset),
                             codec.encode_json(event))
            except Exception:
                log.exception("publishing a cloud alert failed (it is stored)")
        return i + len(unusable)

    def answer_escalations(self) -> int:
        """Score the escalated windows in one model call and publish each verdict on the
        asset's cloud-alert topic. Verdicts are not stored: the same window is scored again,
        in order, when its normal batch arrives."""
        with self._cond:
            urgent, self._urgent = self._urgent, []
        if not urgent:
            return 0
        w = self.window
        inputs, answered = [], []
        for key, end in urgent:
            t = self.store.window_ticks(key, end - w + 1, end)
            if len(t.seqs) != w:
                log.warning("escalated window %s/%s..%d is not complete in the store", *key, end)
                continue
            rows, problems = self._rows_in_model_order(t)
            if any(problems):
                log.warning("escalated window %s/%s..%d cannot be scored: %s", *key, end,
                            next(p for p in problems if p))
                continue
            inputs.append(assemble_windows(t.seqs, rows, [end], self.manifest))
            answered.append((key, end, t))
        if not inputs:
            return 0
        prob, rul = self.model(np.concatenate(inputs))
        now = self.clock()
        cut = self.manifest.thresholds.decision
        for (key, end, t), p, r in zip(answered, prob, rul, strict=True):
            machine = self._machines.get(key)
            state = machine.state if machine else AlertState.NORMAL
            edge_p = t.edge_probability[-1]
            if edge_p is not None:
                same = (float(p) >= cut) == (edge_p >= cut)
                self.metrics.verdicts.labels("agreed" if same else "overruled").inc()
            event = AlertEvent(
                kind="verdict", source="cloud", gateway=key[0], asset=key[1], old_state=state,
                new_state=state, probability=float(p), rul=float(r),
                thresholds=self._thresholds, model_version=self.manifest.version, seq=end,
                tick_time=float(t.times[-1]), published_at=now,
                latency_ms=max(0.0, (now - float(t.received_at[-1])) * 1000))
            try:
                self.publish(topics.cloud_alert(*key), codec.encode_json(event))
            except Exception:
                log.exception("publishing a verdict failed")
        return len(answered)

    def _judge(self, key: AssetKey, seq: int, p: float, r: float, tick_time: float,
               arrived: float, write: ScoreWrite) -> tuple[AssetScore, AlertEvent | None] | None:
        """Feed the alert machine in seq order; a window older than the last one fed (a gap
        filled late) is stored but does not move the state back in time."""
        if seq <= self._fed.get(key, -1):
            return None
        machine = self._machines.get(key)
        if machine is None:
            machine = self._machines[key] = AlertMachine(self.manifest.thresholds)
        self._fed[key] = seq
        transition = machine.update(p, r)
        now = self.clock()
        self._since.setdefault(key, now)
        event = None
        if transition is not None:
            self._since[key] = now
            event = AlertEvent(
                source="cloud", gateway=key[0], asset=key[1], old_state=transition.old,
                new_state=transition.new, probability=p, rul=r, thresholds=self._thresholds,
                model_version=self.manifest.version, seq=seq, tick_time=tick_time,
                published_at=now, latency_ms=max(0.0, (now - arrived) * 1000))
            write.alerts.append(AlertRow(
                gateway=key[0], asset=key[1], seq=seq, source="cloud",
                old_state=transition.old.value, new_state=transition.new.value, probability=p,
                rul=r, model_version=self.manifest.version, tick_time=tick_time,
                published_at=now))
        score = AssetScore(key=key, seq=seq, probability=p, rul=r, state=machine.state.value,
                           state_since=self._since[key], model_version=self.manifest.version,
                           scored_at=now)
        return score, event
