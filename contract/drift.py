"""Input drift: how far an asset's recent inputs have moved from the training distribution.

Pure numpy, shared by the converter (which describes the training data) and the cloud (which
compares each asset's recent ticks with that description), so both bin a value the same way.

The measure is the population stability index (PSI) per feature,
``sum((actual - expected) * ln(actual / expected))`` over bins whose edges are training
quantiles. The default bins are three: below the training's 0.25 % quantile, the bulk, above
its 99.75 % quantile. Not deciles: an asset's recent window covers one stage of its life, while
the training data spans whole lives, so decile bins flag every healthy machine (the last 200
cycles of each C-MAPSS FD001 test engine against train_FD001 deciles: median largest-feature
PSI 3.7). What a model has never seen is values beyond the range it was trained on, and the
tail bins count exactly those (docs/cloud.md gives the figures of the bins tried).

Where the model has operating regimes, each regime has its own bins, a tick is binned with the
bins of its regime, and a feature's PSI is the mean of the per-regime PSIs weighted by the
asset's ticks in each regime: a change in how much time an asset spends in each regime is not
drift; a change of the values within a regime is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from contract.errors import ContractError
from contract.manifest import FeatureBins, RegimeStats, TrainingStats

# Training quantiles the bin edges sit at: three bins, two of them the far tails.
DEFAULT_QUANTILES = (0.0025, 0.9975)
# An empty bin counts as this share, so the logarithm stays finite (a common PSI convention).
PSI_FLOOR = 1e-4


class DriftError(ContractError):
    """Inputs that cannot be compared with the training statistics (wrong shape, regimes)."""


class DriftState(str, Enum):
    OK = "ok"
    WATCH = "watch"
    DRIFT = "drift"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class DriftSettings:
    """Thresholds on PSI, the fewest ticks worth judging and the share of features that must
    drift for the asset to count as drifting (0.5: half of them; one odd sensor shows in its
    feature's state, the asset drifts when most of its inputs do)."""

    watch: float = 0.1
    drift: float = 0.25
    min_ticks: int = 50
    feature_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.watch <= self.drift:
            raise DriftError("drift thresholds need 0 < watch <= drift")
        if self.min_ticks < 1:
            raise DriftError("min_ticks must be >= 1")
        if not 0 < self.feature_share <= 1:
            raise DriftError("feature_share must be in (0, 1]")

    def state(self, psi: float) -> DriftState:
        if psi >= self.drift:
            return DriftState.DRIFT
        if psi >= self.watch:
            return DriftState.WATCH
        return DriftState.OK


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    psi: float
    state: DriftState
    regime_psi: list[float | None]  # per regime; None where the asset had no tick in it


@dataclass(frozen=True)
class DriftReport:
    """One asset's drift over its `ticks` most recent ticks. `score` is the PSI that decides the
    asset's state: the ceil(feature_share * F)-th largest feature PSI."""

    state: DriftState
    score: float | None
    ticks: int
    features: list[FeatureDrift] = field(default_factory=list)
    regime_ticks: list[int] = field(default_factory=list)
    reason: str | None = None

    @property
    def drifting(self) -> list[str]:
        return [f.feature for f in self.features if f.state is DriftState.DRIFT]


def crossing(previous: DriftState | None, current: DriftState) -> str | None:
    """The drift event a new judgement makes: `raised` on entering drift, `cleared` on leaving
    it (with `assess`'s hysteresis: back under `watch`); none while the state holds or cannot
    be judged."""
    if current is DriftState.DRIFT and previous is not DriftState.DRIFT:
        return "raised"
    if previous is DriftState.DRIFT and current in (DriftState.OK, DriftState.WATCH):
        return "cleared"
    return None


# -- describing the training data (converter) -----------------------------------------------

def bin_index(values: np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """The bin of each value: bin i holds edges[i-1] <= v < edges[i] (ties go up, so a value
    equal to a repeated edge always lands in the same bin, in training and in the cloud)."""
    return np.searchsorted(np.asarray(edges, np.float64), np.asarray(values, np.float64),
                           side="right")


def bin_shares(values: np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """The share of `values` in each of the len(edges) + 1 bins."""
    values = np.asarray(values, np.float64)
    counts = np.bincount(bin_index(values, edges), minlength=len(edges) + 1)
    return counts / max(1, len(values))


def describe_feature(values: np.ndarray,
                     quantiles: Sequence[float] = DEFAULT_QUANTILES) -> FeatureBins:
    """Bin edges at the training quantiles of one feature and the training share per bin
    (measured with `bin_shares`, so a feature with repeated values is described exactly)."""
    values = np.asarray(values, np.float64)
    if not len(values):
        raise DriftError("no training values to describe")
    edges = np.quantile(values, list(quantiles))
    return FeatureBins(edges=[float(e) for e in edges],
                       expected=[float(s) for s in bin_shares(values, edges)])


def describe_training(rows: np.ndarray, regime_of_rows: np.ndarray | None = None,
                      regimes: int = 1,
                      quantiles: Sequence[float] = DEFAULT_QUANTILES) -> TrainingStats:
    """Training statistics of raw (un-normalised) rows (n, F) in manifest feature order, per
    regime when `regime_of_rows` gives each row's regime (0..regimes-1)."""
    rows = np.asarray(rows, np.float64)
    if rows.ndim != 2 or not len(rows):
        raise DriftError("training rows must be a non-empty (ticks, features) array")
    if regime_of_rows is None:
        regime_of_rows = np.zeros(len(rows), np.int64)
    regime_of_rows = np.asarray(regime_of_rows)
    described = []
    for r in range(regimes):
        part = rows[regime_of_rows == r]
        if not len(part):
            raise DriftError(f"regime {r} has no training rows")
        described.append(RegimeStats(
            ticks=len(part),
            features=[describe_feature(part[:, j], quantiles) for j in range(rows.shape[1])]))
    return TrainingStats(quantiles=[float(q) for q in quantiles], regimes=described)


# -- comparing recent inputs (cloud) --------------------------------------------------------

def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray,
        floor: float = PSI_FLOOR) -> float:
    """Population stability index of `actual` shares against `expected` shares."""
    e = np.maximum(np.asarray(expected, np.float64), floor)
    a = np.maximum(np.asarray(actual, np.float64), floor)
    return float(np.sum((a - e) * np.log(a / e)))


class Reference:
    """Training statistics as arrays, built once per model: per regime the bin edges (F, B-1)
    and expected shares (F, B), so a check bins every feature of a regime in one operation."""

    def __init__(self, stats: TrainingStats) -> None:
        self.stats = stats
        self.edges = [np.array([f.edges for f in r.features], np.float64) for r in stats.regimes]
        self.expected = [np.array([f.expected for f in r.features], np.float64)
                         for r in stats.regimes]

    @property
    def regimes(self) -> int:
        return len(self.edges)

    def psi(self, regime: int, rows: np.ndarray) -> np.ndarray:
        """PSI of every feature of `rows` (n, F), all in `regime`, against its training bins."""
        edges, expected = self.edges[regime], self.expected[regime]
        n_feat, n_bins = expected.shape
        # Bin i holds edges[i-1] <= v < edges[i], as `bin_index` puts it.
        index = (rows[:, :, None] >= edges[None, :, :]).sum(axis=2)
        index += np.arange(n_feat) * n_bins
        actual = np.bincount(index.ravel(), minlength=n_feat * n_bins).reshape(
            n_feat, n_bins) / len(rows)
        e = np.maximum(expected, PSI_FLOOR)
        a = np.maximum(actual, PSI_FLOOR)
        return np.sum((a - e) * np.log(a / e), axis=1)


def assess(rows: np.ndarray, features: Sequence[str], stats: TrainingStats | Reference,
           settings: DriftSettings, regime_of_rows: np.ndarray | None = None,
           previous: DriftState | None = None) -> DriftReport:
    """Compare raw rows (n, F) of one asset, in manifest feature order, with the training
    statistics. `regime_of_rows` gives each row's regime where the statistics have several.
    `previous` is the asset's last state: one in drift stays in drift until its score falls
    below `watch` (hysteresis, so a score wavering at the drift line raises no event storm)."""
    reference = stats if isinstance(stats, Reference) else Reference(stats)
    rows = np.asarray(rows, np.float64)
    n_regimes = reference.regimes
    if rows.ndim != 2 or rows.shape[1] != len(features):
        raise DriftError(f"rows have shape {rows.shape}; expected (ticks, {len(features)})")
    if regime_of_rows is None:
        if n_regimes != 1:
            raise DriftError(f"the training statistics have {n_regimes} regimes: each tick "
                             "needs its regime")
        regime_of_rows = np.zeros(len(rows), np.int64)
    regime_of_rows = np.asarray(regime_of_rows)
    if len(regime_of_rows) != len(rows):
        raise DriftError("one regime per row is needed")
    regime_ticks = [int(np.sum(regime_of_rows == r)) for r in range(n_regimes)]
    if len(rows) < settings.min_ticks:
        return DriftReport(DriftState.UNAVAILABLE, None, len(rows), regime_ticks=regime_ticks,
                           reason=f"{len(rows)} recent ticks, fewer than the "
                                  f"{settings.min_ticks} needed")
    per_regime: list[np.ndarray | None] = [
        reference.psi(r, rows[regime_of_rows == r]) if regime_ticks[r] else None
        for r in range(n_regimes)]
    total = sum(p * n for p, n in zip(per_regime, regime_ticks, strict=True) if p is not None)
    values = np.asarray(total, np.float64) / len(rows)
    judged = [FeatureDrift(name, round(float(values[j]), 6), settings.state(float(values[j])),
                           [None if p is None else round(float(p[j]), 6) for p in per_regime])
              for j, name in enumerate(features)]
    ranked = sorted((f.psi for f in judged), reverse=True)
    k = max(1, math.ceil(settings.feature_share * len(ranked)))
    score = ranked[k - 1]
    state = settings.state(score)
    if previous is DriftState.DRIFT and state is DriftState.WATCH:
        state = DriftState.DRIFT
    return DriftReport(state, score, len(rows), judged, regime_ticks)
