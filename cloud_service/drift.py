"""Input drift, the cloud's adapter: each owned asset's recent ticks against the training
statistics in the manifest (the comparison itself is contract/drift.py).

Checks run in the scoring thread between batches, a few assets at a time (`drift.batch`), and
an asset is checked again only after `drift.interval` seconds and only if new ticks arrived, so
a pass over a large fleet is spread out instead of holding scoring up. The ticks are read in
one store call per step for all the assets checked. Each check is stored (the API serves it);
an asset crossing into drift raises a drift event, one coming back under the threshold clears
it. Like scoring, a replica checks only the assets it owns and writes only while it still owns
them; the gauges in /metrics cover this replica's assets (max / sum them across replicas).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from cloud_service import schemas
from cloud_service.metrics import Metrics
from cloud_service.store import (
    AssetKey,
    DriftCheck,
    DriftEventRow,
    FleetReader,
    ScoringStore,
    StoredDrift,
    WindowTicks,
)
from contract.drift import (
    DriftReport,
    DriftSettings,
    DriftState,
    Reference,
    assess,
    crossing,
)
from contract.manifest import Manifest
from contract.preprocess import Normaliser

log = logging.getLogger(__name__)
RowsOf = Callable[[WindowTicks], tuple[np.ndarray, list[str | None]]]


@dataclass(frozen=True)
class DriftOptions:
    """How the cloud checks drift (the `drift` section of the config)."""

    settings: DriftSettings = field(default_factory=DriftSettings)
    window: int = 200
    interval: float = 30.0
    batch: int = 64


def report_detail(report: DriftReport, settings: DriftSettings, window: int,
                  out_of_regime: int = 0) -> str:
    """The stored JSON of one check: what the API's drift route returns beside the summary."""
    return json.dumps({
        "features": [{"feature": f.feature, "psi": f.psi, "state": f.state.value,
                      "regime_psi": f.regime_psi} for f in report.features],
        "regime_ticks": report.regime_ticks, "out_of_regime": out_of_regime,
        "reason": report.reason, "window": window, "settings": asdict(settings)},
        separators=(",", ":"))


def drift_view(row: StoredDrift) -> schemas.AssetDrift:
    """A stored check as the API and the pages show it."""
    detail = json.loads(row["detail"])
    return schemas.AssetDrift(
        gateway=row["gateway"], asset=row["asset"], state=row["state"], score=row["score"],
        reason=detail.get("reason"), ticks=row["ticks"], last_seq=row["last_seq"],
        checked_at=row["checked_at"], model_version=row["model_version"],
        window=detail.get("window"), thresholds=detail.get("settings"),
        regime_ticks=detail.get("regime_ticks", []),
        out_of_regime=detail.get("out_of_regime", 0),
        features=[schemas.FeatureDrift(**f) for f in detail.get("features", [])])


def describe_asset_drift(store: FleetReader, gateway: str, asset: str, manifest: Manifest | None,
                     checking: bool) -> schemas.AssetDrift:
    """The asset's latest check, or why there is none (`checking`: this service runs drift
    checks). The asset must exist."""
    row = store.asset_drift(gateway, asset)
    if row is not None:
        return drift_view(row)
    if manifest is None:
        why = "no model is loaded"
    elif manifest.training_stats is None:
        why = (f"model {manifest.version} carries no training statistics (retrain it with "
               "this converter to get them)")
    elif not checking:
        why = "drift checks are off (drift.enabled)"
    else:
        why = "not checked yet"
    return schemas.AssetDrift(gateway=gateway, asset=asset, state="unavailable", reason=why)


class DriftMonitor:
    def __init__(self, store: ScoringStore, manifest: Manifest, metrics: Metrics,
                 options: DriftOptions, rows_of: RowsOf,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.manifest = manifest
        self.metrics = metrics
        self.settings = options.settings
        self.rows_of = rows_of
        self.window = options.window
        self.interval = options.interval
        self.batch = options.batch
        self.clock = clock
        self.stats = manifest.training_stats
        self.reference = None if self.stats is None else Reference(self.stats)
        self.normaliser = Normaliser.of(manifest)
        self.width = len(manifest.features)
        self._checked_seq: dict[AssetKey, int] = {}
        self._next_at: dict[AssetKey, float] = {}
        self._state: dict[AssetKey, DriftState | None] = {}
        self._psi: dict[AssetKey, np.ndarray] = {}
        if self.stats is None:
            log.warning("model %s carries no training statistics: input drift is not checked",
                        manifest.version)

    @property
    def available(self) -> bool:
        return self.stats is not None

    def forget(self, key: AssetKey) -> None:
        """Another replica owns the asset now."""
        for table in (self._checked_seq, self._next_at, self._state, self._psi):
            table.pop(key, None)
        self._update_gauges()

    def due(self, last_seq: Mapping[AssetKey, int]) -> list[AssetKey]:
        """Owned assets with ticks not yet checked whose interval has passed, oldest first."""
        now = self.clock()
        ready = [key for key, seq in last_seq.items()
                 if seq != self._checked_seq.get(key) and self._next_at.get(key, 0.0) <= now]
        ready.sort(key=lambda key: (self._next_at.get(key, 0.0), key))
        return ready[:self.batch]

    def step(self, last_seq: Mapping[AssetKey, int], owner: str | None = None) -> int:
        """Check the assets that are due (at most `batch`); returns how many were checked."""
        if self.reference is None:
            return 0
        keys = self.due(last_seq)
        if not keys:
            return 0
        t0 = time.perf_counter()
        self._load_states(keys)
        ticks = self.store.windows_ticks(
            [(key, max(0, last_seq[key] - self.window + 1), last_seq[key]) for key in keys])
        now = self.clock()
        checks: list[DriftCheck] = []
        events: list[DriftEventRow] = []
        reports: dict[AssetKey, DriftReport] = {}
        for key in keys:
            t = ticks.get(key)
            if t is None or not len(t.seqs):
                continue
            rows, problems = self.rows_of(t)
            rows = rows[np.array([p is None for p in problems], bool)]
            # Rows hold the manifest's columns: the features, then the settings regimes need.
            regime, far = self.normaliser.regimes_of(rows)
            report = assess(rows[:, :self.width], self.manifest.features, self.reference,
                            self.settings, regime, previous=self._state.get(key))
            reports[key] = report
            checks.append(DriftCheck(
                gateway=key[0], asset=key[1], state=report.state.value, score=report.score,
                ticks=report.ticks, last_seq=int(t.seqs[-1]), checked_at=now,
                model_version=self.manifest.version,
                detail=report_detail(report, self.settings, self.window, int(far.sum()))))
            kind = crossing(self._state.get(key), report.state)
            if kind is not None:
                events.append(DriftEventRow(
                    gateway=key[0], asset=key[1], kind=kind, score=report.score,
                    features=json.dumps(report.drifting), model_version=self.manifest.version,
                    at=now))
        refused = self.store.write_drift(checks, events, owner=owner)
        for key in keys:
            self._checked_seq[key] = last_seq[key]
            self._next_at[key] = now + self.interval
        for key, report in reports.items():
            if key in refused:
                continue
            if report.state is not DriftState.UNAVAILABLE:
                self._state[key] = report.state
                self._psi[key] = np.array([f.psi for f in report.features])
        for event in events:
            if (event.gateway, event.asset) in refused:
                continue
            self.metrics.drift_events.labels(event.kind).inc()
            log.warning("%s/%s: input drift %s (score %.3g; drifting: %s)", event.gateway,
                        event.asset, event.kind, event.score or 0.0,
                        ", ".join(json.loads(event.features)) or "none")
        self.metrics.drift_checks.inc(len(checks))
        self.metrics.drift_check_seconds.observe(time.perf_counter() - t0)
        self._update_gauges()
        return len(checks)

    def _load_states(self, keys: list[AssetKey]) -> None:
        """The stored state of assets seen for the first time (taken over, or a restart), so
        an asset already drifting raises no second event."""
        if all(key in self._state for key in keys):
            return
        stored = {(row["gateway"], row["asset"]): row for row in self.store.asset_drifts()}
        for key in keys:
            if key in self._state:
                continue
            row = stored.get(key)
            state = DriftState(row["state"]) if row else None
            self._state[key] = None if state is DriftState.UNAVAILABLE else state

    def _update_gauges(self) -> None:
        drifting = sum(state is DriftState.DRIFT for state in self._state.values())
        self.metrics.assets_drifting.set(drifting)
        if self._psi:
            worst = np.max(np.stack(list(self._psi.values())), axis=0)
            for name, value in zip(self.manifest.features, worst, strict=True):
                self.metrics.drift_psi.labels(name).set(float(value))
        else:
            for name in self.manifest.features:
                self.metrics.drift_psi.labels(name).set(0.0)
