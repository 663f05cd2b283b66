"""Batched cloud scoring in a background thread.

Each replica scores only the assets it owns (`ownership.py`: leases in the store, renewed by
this thread's heartbeat). New ticks are found two ways: ingest in this process tells the scorer
which seq ranges it stored, and a scan of the owned assets' rows finds ticks that other replicas
stored. The scorer turns them into complete windows not yet scored (`windows.py`), in seq order
per asset, rebuilds those windows from the stored ticks, normalises them per the manifest and
runs the float model once per batch across assets. Each prediction is stored with the edge's
score of the same window and their difference. An alert machine per asset (fed in seq order)
turns the scores into cloud alert events, which are stored, with the machine's state, only while
this replica still owns the asset, and then published; the webhook deliveries of each alert
(`notifications.py`) are queued in the same transaction. Nothing is dropped: a replica that takes
an asset over continues from the stored machine state and the first window without a
prediction.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Protocol

import numpy as np

from cloud_service.drift import DriftMonitor, DriftOptions
from cloud_service.metrics import Metrics
from cloud_service.ownership import (
    OwnedAsset,
    OwnershipError,
    advance,
    first_window_end,
    next_window_end,
    rebalance,
    skip_hole,
)
from cloud_service.store import (
    AlertRow,
    AssetKey,
    AssetScore,
    Inserted,
    PredictionRow,
    ScoreWrite,
    ScoringStore,
    StoreError,
    WebhookDelivery,
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
from contract.alerting import AlertMachine, MachineState
from contract.manifest import Manifest
from contract.payloads import AlertEvent, AlertState
from contract.preprocess import OutOfRegimeLog

log = logging.getLogger(__name__)
BatchModel = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
Publish = Callable[[str, bytes], object]
# How far behind its frontier a takeover or a scan looks for windows completed late.
LOOKBACK_TICKS = 256
# Windows of one asset taken together when it has a backlog (they share their ticks).
RUN_OF_WINDOWS = 16
# Owned assets are scanned for ticks stored by other replicas; a full scan now and then also
# catches a batch committed long after it was received.
FULL_SCAN_EVERY = 10.0
SCAN_MARGIN = 5.0


class AlertNotifier(Protocol):
    """Who hears of cloud alerts beyond MQTT (`notifications.WebhookSender`)."""

    def plan(self, event: AlertEvent) -> list[WebhookDelivery]:
        """Queue rows to store with the alert."""
        ...

    def wake(self) -> None:
        """Rows were queued."""
        ...


class Scorer:
    def __init__(self, store: ScoringStore, model: BatchModel, manifest: Manifest, metrics: Metrics,
                 publish: Publish, batch_max: int = 512, max_delay: float = 0.05,
                 clock: Callable[[], float] = time.time, replica: str = "local",
                 lease_seconds: float = 10.0, gap_wait: float = 60.0,
                 scan_interval: float = 0.25, drift: DriftOptions | None = None,
                 notifier: AlertNotifier | None = None) -> None:
        self.store = store
        self.notifier = notifier
        self.model = model
        self.manifest = manifest
        self.metrics = metrics
        self.publish = publish
        self.batch_max = batch_max
        self.max_delay = max_delay
        self.clock = clock
        self.window = manifest.window
        self.replica = replica
        self.lease_seconds = lease_seconds
        self.gap_wait = gap_wait
        self.scan_interval = scan_interval
        self.pending = PendingWindows()
        self._token = uuid.uuid4().hex
        self._in_flight = 0
        self._dirty: dict[AssetKey, list[tuple[int, int]]] = defaultdict(list)
        self._urgent: list[tuple[AssetKey, int]] = []  # escalated windows awaiting a verdict
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._oldest: float | None = None
        # Per owned asset: alert machine, last window fed to it, since when its state holds,
        # the next window end to queue (the frontier), since when a hole holds it back, the
        # tick count and last seq seen in its row.
        self.owned: set[AssetKey] = set()
        self.leader = False
        self._machines: dict[AssetKey, AlertMachine] = {}
        self._fed: dict[AssetKey, int] = {}
        self._since: dict[AssetKey, float] = {}
        self._next_end: dict[AssetKey, int] = {}
        self._hole_since: dict[AssetKey, float] = {}
        self._seen_ticks: dict[AssetKey, int] = {}
        self._last_seq: dict[AssetKey, int] = {}
        self._next_beat = 0.0
        self._next_scan = 0.0
        self._next_full_scan = 0.0
        self._last_scan: float | None = None
        self._unowned_news = False
        self._feature_maps: dict[int, FeatureMap] = {}
        self._regime_log = OutOfRegimeLog()
        self.recovered = threading.Event()
        self.last_error: str | None = None
        thresholds = manifest.thresholds.model_dump()
        self._thresholds = {k: float(v) for k, v in thresholds.items() if v is not None}
        metrics.track_backlog(self.backlog)
        self.drift = None if drift is None else DriftMonitor(
            store, manifest, metrics, drift, self._rows_in_model_order, clock)

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
                if item.key not in self.owned:
                    self._unowned_news = True  # its owner scans for it; or it is new: claim
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
        """Stop scoring and hand the owned assets back at once (a killed replica's assets
        move only when its lease expires)."""
        self._stopping.set()
        with self._cond:
            self._cond.notify()
        if self._thread:
            self._thread.join(timeout)
        if self.recovered.is_set():
            try:
                self.store.leave(self.replica, self._token)
            except Exception as exc:
                log.warning("could not hand the assets back (they move when the lease "
                            "expires): %s", exc)

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.maintain()
                if not self.recovered.is_set():
                    self._stopping.wait(0.5)
                    continue
                self.step(wait=True)
                self.check_drift()
                self.last_error = None
            except Exception as exc:  # keep scoring; the windows stay pending in the store
                if isinstance(exc, StoreError):
                    # Start again from the store: forget the assets, so the next heartbeat
                    # adopts them anew from their stored alert state and first unscored window.
                    self.metrics.store_errors.labels("scoring").inc()
                    for key in list(self.owned):
                        self._forget(key)
                    self.recovered.clear()
                    self._next_beat = 0.0
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("scoring failed; retrying")
                self._stopping.wait(1.0)

    def recover(self) -> None:
        """Join the replicas: renew the lease, claim a share of the assets and queue their
        windows that have no prediction yet."""
        self.heartbeat()

    # -- ownership -------------------------------------------------------------------------

    def maintain(self) -> None:
        """Heartbeat when due (or soon after ticks of an asset nobody owns arrived), and scan
        the owned assets for ticks other replicas stored."""
        now = self.clock()
        if now >= self._next_beat or (self._unowned_news and now >= self._next_beat
                                      - self.lease_seconds / 4 + 0.2):
            try:
                self.heartbeat()
            except OwnershipError as exc:
                # A previous run of this replica that was killed holds the id until its lease
                # expires; a second live replica with the same id never gets it.
                if self.last_error != str(exc):
                    log.warning("%s; waiting for its lease (%.0f s) to expire", exc,
                                self.lease_seconds)
                self.last_error = str(exc)
                self._next_beat = now + 1.0
                return
        if now >= self._next_scan and self.recovered.is_set():
            self.scan()

    def heartbeat(self) -> None:
        now = self.clock()
        self._unowned_news = False
        membership = self.store.heartbeat(self.replica, self._token, self.lease_seconds)
        self.leader = membership.leader
        claim, release = rebalance(membership)
        if release:
            give_up = sorted(self.owned)[-release:]
            for key in give_up:
                self._forget(key)
            self.store.release_assets(self.replica, give_up)
            log.info("released %d assets to rebalance across %d replicas", len(give_up),
                     membership.live_replicas)
        if claim:
            self.store.claim_assets(self.replica, claim)
        rows = self.store.owned_assets(self.replica)
        now_owned = {row.key for row in rows}
        lost = self.owned - now_owned
        for key in lost:
            self._forget(key)
        gained = [row for row in rows if row.key not in self.owned]
        for row in gained:
            self._adopt(row)
        if lost or gained:
            log.info("now scoring %d assets (%d taken over, %d lost) of %d across %d replicas",
                     len(now_owned), len(gained), len(lost), membership.assets,
                     membership.live_replicas)
        self.owned = now_owned
        self.metrics.assets_owned.set(len(now_owned))
        self.metrics.count_asset_states(m.state.value for m in self._machines.values())
        self.metrics.replicas_live.set(membership.live_replicas)
        self.metrics.leader.set(int(membership.leader))
        self._next_beat = now + self.lease_seconds / 4
        self.recovered.set()

    def scan(self) -> None:
        """Queue work for owned assets whose rows changed since the last scan (ticks stored
        by any replica), and re-check assets held back by a hole."""
        now = self.clock()
        last_scan = self._last_scan
        full = now >= self._next_full_scan or last_scan is None
        since = None if full or last_scan is None else last_scan - SCAN_MARGIN
        rows = self.store.owned_assets(self.replica, seen_since=since)
        with self._cond:
            for row in rows:
                key = row.key
                if key not in self.owned or row.last_seq is None:
                    continue
                before_ticks = self._seen_ticks.get(key, 0)
                before_last = self._last_seq.get(key, -1)
                self._last_seq[key], self._seen_ticks[key] = row.last_seq, row.ticks
                if row.ticks == before_ticks:
                    continue
                frontier = self._next_end.get(key, first_window_end(self.window))
                if row.ticks - before_ticks > row.last_seq - before_last:
                    # Some of the new ticks landed behind the old head: windows completed late
                    self._dirty[key].append(self._scan_range(key, row.last_seq))
                elif row.last_seq >= frontier:
                    self._dirty[key].append((frontier, row.last_seq))
            for key in self._hole_since:
                held_end = self._next_end.get(key)
                if held_end is not None and key in self._last_seq:
                    self._dirty[key].append((held_end, max(held_end, self._last_seq[key])))
        self._last_scan = now
        self._next_scan = now + self.scan_interval
        if full:
            self._next_full_scan = now + FULL_SCAN_EVERY

    def _scan_range(self, key: AssetKey, last_seq: int) -> tuple[int, int]:
        lo = max(first_window_end(self.window), self._next_end.get(key, 0) - LOOKBACK_TICKS)
        return lo, max(lo, last_seq)

    def _adopt(self, row: OwnedAsset) -> None:
        """Continue an asset from its stored state: alert machine, last window fed."""
        key = row.key
        self._machines[key] = AlertMachine.restore(self.manifest.thresholds, row.machine)
        self._fed[key] = -1 if row.scored_seq is None else row.scored_seq
        if row.state_since is not None:
            self._since[key] = row.state_since
        self._next_end[key] = next_window_end(row.scored_seq, self.window)
        self._seen_ticks[key] = row.ticks
        if row.last_seq is not None:
            self._last_seq[key] = row.last_seq
            with self._cond:
                self._dirty[key].append(self._scan_range(key, row.last_seq))

    def _forget(self, key: AssetKey) -> None:
        """Another replica scores this asset now: drop everything held for it."""
        self.pending.discard(key)
        for table in (self._machines, self._fed, self._since, self._next_end,
                      self._hole_since, self._seen_ticks, self._last_seq):
            table.pop(key, None)
        with self._cond:
            self._dirty.pop(key, None)
        self.owned.discard(key)
        if self.drift is not None:
            self.drift.forget(key)

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
        taken = self.pending.take(self.batch_max, min_run=RUN_OF_WINDOWS)
        self._in_flight = sum(len(v) for v in taken.values())
        try:
            return self._score(taken)
        except BaseException:
            for key, ends in taken.items():  # nothing was stored: score them again
                if key in self.owned:
                    self.pending.add(key, ends)
            raise
        finally:
            self._in_flight = 0
            self._oldest = self.clock() - self.max_delay if len(self.pending) else None

    def drain(self) -> int:
        """Score everything known now (for tests, the benchmark and shutdown)."""
        self.heartbeat()
        self.scan()
        total = 0
        while True:
            n = self.step()
            self.check_drift()
            if not n and not len(self.pending) and not self._dirty:
                return total
            total += n

    def check_drift(self) -> int:
        """Check the input drift of the owned assets that are due (a few at a time, between
        scoring batches); returns the assets checked."""
        if self.drift is None:
            return 0
        return self.drift.step({key: self._last_seq[key] for key in self.owned
                                if key in self._last_seq}, owner=self.replica)

    def _expand(self) -> None:
        with self._cond:
            dirty, self._dirty = self._dirty, defaultdict(list)
        for key, ranges in dirty.items():
            if key not in self.owned:
                continue
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
        """Queue the complete, unscored windows ending in lo..hi: those behind the frontier
        (completed late) as found, those from the frontier on only in order."""
        frontier = self._next_end.get(key, first_window_end(self.window))
        lo, hi = min(lo, frontier), max(hi, frontier)
        t_lo, t_hi = ticks_needed(lo, hi, self.window)
        seqs = self.store.tick_seqs(key, t_lo, t_hi)
        ends = complete_window_ends(seqs, self.window, lo, hi)
        if not len(ends):
            return
        done = self.store.predicted_seqs(key, int(ends[0]), int(ends[-1]))
        late = [int(e) for e in ends[ends < frontier] if int(e) not in done
                and not self.pending.contains(key, int(e))]
        step = advance(frontier, ends, done)
        ready = step.ready
        if step.blocked_by_hole:
            now = self.clock()
            first_seen = self._hole_since.setdefault(key, now)
            if now - first_seen >= self.gap_wait:
                resume = skip_hole(ends, step.next_end)
                log.warning("%s/%s: ticks before seq %d missing for %.0f s; scoring on from "
                            "the window ending at %d", *key, resume, now - first_seen, resume)
                self.metrics.window_gaps_skipped.inc()
                self._hole_since.pop(key, None)
                step = advance(resume, ends, done)
                ready = ready + step.ready
        else:
            self._hole_since.pop(key, None)
        self._next_end[key] = step.next_end
        new = late + ready
        if new and self.pending.add(key, new) and self._oldest is None:
            self._oldest = self.clock()

    # -- one batch -------------------------------------------------------------------------

    def _feature_map(self, feature_set: int) -> FeatureMap:
        fm = self._feature_maps.get(feature_set)
        if fm is None:
            fm = FeatureMap.build(self.store.feature_set(feature_set), self.manifest.columns)
            self._feature_maps[feature_set] = fm
        return fm

    def _rows_in_model_order(self, t: WindowTicks) -> tuple[np.ndarray, list[str | None]]:
        """The stored rows reordered to the manifest's columns; per row, None or why the
        model cannot use it."""
        rows = np.zeros((len(t.seqs), len(self.manifest.columns)), np.float32)
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
        far: list[tuple[AssetKey, np.ndarray]] = []  # window ends out of every regime
        plan: list[tuple[AssetKey, WindowTicks, list[int], list[int]]] = []
        unusable: list[tuple[AssetKey, WindowTicks, int, str]] = []
        ticks_of = self.store.windows_ticks(
            [(key, ends[0] - w + 1, ends[-1]) for key, ends in taken.items()])
        for key, ends in taken.items():
            t = ticks_of[key]
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
                x, flagged = assemble_windows(t.seqs, rows, good, self.manifest)
                inputs.append(x)
                if flagged.any():
                    far.append((key, np.asarray(good)[flagged]))
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
        before = self._save_machines(key for key, *_ in plan)
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
        try:
            stored = self.store.write_scores(write, owner=self.replica)
        except BaseException:
            self._restore_machines(before)  # nothing stored: they will see these again
            raise
        refused = stored.refused
        if stored.duplicates:
            log.error("%d window(s) had been scored already", stored.duplicates)
            self.metrics.windows_scored_twice.inc(stored.duplicates)
        if refused:
            log.info("%d asset(s) were taken over by another replica; their %d scores are "
                     "left to it", len(refused),
                     sum((p.gateway, p.asset) in refused for p in write.predictions))
            self.metrics.scores_refused.inc(
                sum((p.gateway, p.asset) in refused for p in write.predictions))
            i -= sum((p.gateway, p.asset) in refused and p.error is None
                     for p in write.predictions)
            unusable = [u for u in unusable if u[0] not in refused]
            events = [e for e in events if (e.gateway, e.asset) not in refused]
            for key in refused:
                self._forget(key)
        self.metrics.windows_scored.inc(i)
        self._count_out_of_regime([f for f in far if f[0] not in refused])
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
        if events and self.notifier is not None:
            self.notifier.wake()
        return i + len(unusable)

    def _count_out_of_regime(self, far: list[tuple[AssetKey, np.ndarray]]) -> None:
        """Count (and now and then log) scored ticks whose settings fit no regime."""
        total = sum(len(seqs) for _, seqs in far)
        if not total:
            return
        self.metrics.out_of_regime.inc(total)
        (gateway, asset), seqs = far[0]
        line = self._regime_log.note(total, f"{gateway}/{asset} seq {int(seqs[0])}")
        if line:
            log.warning("%s", line)

    def _save_machines(self, keys: Iterable[AssetKey]) -> dict[AssetKey, tuple]:
        return {key: (self._machines[key].snapshot() if key in self._machines else None,
                      self._fed.get(key), self._since.get(key)) for key in keys}

    def _restore_machines(self, saved: dict[AssetKey, tuple]) -> None:
        for key, (machine, fed, since) in saved.items():
            if machine is None:
                self._machines.pop(key, None)
            else:
                self._machines[key] = AlertMachine.restore(self.manifest.thresholds, machine)
            for table, value in ((self._fed, fed), (self._since, since)):
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value

    def _stored_state(self, key: AssetKey) -> AlertState:
        """The alert state of an asset another replica owns, as last stored."""
        row = self.store.asset(*key)
        return AlertState(row["cloud_state"]) if row and row.get("cloud_state") else \
            AlertState.NORMAL

    def answer_escalations(self) -> int:
        """Score the escalated windows in one model call and publish each verdict on the
        asset's verdict topic (cloud-alert carries state changes only). Verdicts are not
        stored: the same window is scored again, in order, when its normal batch arrives."""
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
            inputs.append(assemble_windows(t.seqs, rows, [end], self.manifest)[0])
            answered.append((key, end, t))
        if not inputs:
            return 0
        prob, rul = self.model(np.concatenate(inputs))
        now = self.clock()
        cut = self.manifest.thresholds.decision
        for (key, end, t), p, r in zip(answered, prob, rul, strict=True):
            machine = self._machines.get(key)
            state = machine.state if machine else self._stored_state(key)
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
                self.publish(topics.verdict(*key), codec.encode_json(event))
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
            if self.notifier is not None:
                write.deliveries.extend(self.notifier.plan(event))
        saved: MachineState = machine.snapshot()
        score = AssetScore(key=key, seq=seq, probability=p, rul=r, state=machine.state.value,
                           state_since=self._since[key], model_version=self.manifest.version,
                           scored_at=now,
                           pending=saved.pending.value if saved.pending else None,
                           pending_count=saved.count)
        return score, event
