"""Run-to-failure data: loaders, feature choice, labels, the split by asset and the windows.

A *fleet* is a mapping asset -> its rows in time order (one row per tick, one column per
candidate feature). Everything downstream (labels, normalisation, windows) works on fleets, so
C-MAPSS and a user's CSV take the same path once loaded.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from contract.cmapss import COLUMNS, SENSORS, SETTINGS, CmapssFormatError, read_cmapss
from contract.drift import describe_training
from contract.manifest import Normalisation, Regimes, TrainingStats
from contract.preprocess import Normaliser, nearest_centre, pad_front, sliding_windows

DEFAULT_HORIZON = 30
DEFAULT_RUL_CAP = 125.0
MIN_STD = 1e-6
MIN_DISTINCT = 3
# Regime search: k-means for k = 1..MAX_REGIMES on standardised settings. k > 1 is taken only
# when its mean silhouette reaches STRONG_SILHOUETTE (Kaufman and Rousseeuw's "strong
# structure"): settings that are noise around one operating point score far lower.
MAX_REGIMES = 8
STRONG_SILHOUETTE = 0.7
SEARCH_ROWS = 4000       # rows the k-means search and the silhouette are run on (seeded sample)
SILHOUETTE_ROWS = 2000
KMEANS_RESTARTS = 4
# A tick is out of regime beyond max(LIMIT_SPREAD x the 99.9th percentile of training
# distances, LIMIT_SEPARATION x the smallest distance between two centres, MIN_LIMIT).
LIMIT_SPREAD = 3.0
LIMIT_SEPARATION = 0.25
MIN_LIMIT = 1e-3
# The operating time since new (C-MAPSS: the cycle count; a real machine's hour meter) is a
# model input: where the sensors of a young engine show little wear yet, its age still says how
# much life such engines usually have left (figures in docs/converter.md, "Why the age").
AGE = "cycle"


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the line and the reason."""


@dataclass
class Fleet:
    """Per-asset time series. `rul_at_end` is the remaining life after each asset's last row
    (0 for run-to-failure data, the truth file's value for C-MAPSS test units)."""

    columns: list[str]
    series: dict[str, np.ndarray]
    times: dict[str, np.ndarray]
    rul_at_end: dict[str, float] = field(default_factory=dict)

    @property
    def assets(self) -> list[str]:
        return list(self.series)

    def subset(self, assets: list[str]) -> Fleet:
        return Fleet(self.columns, {a: self.series[a] for a in assets},
                     {a: self.times[a] for a in assets},
                     {a: self.rul_at_end.get(a, 0.0) for a in assets})

    def select(self, features: list[str]) -> Fleet:
        """The same fleet restricted to `features`, in that order."""
        missing = [f for f in features if f not in self.columns]
        if missing:
            raise DataError(f"the data has no column(s) {', '.join(missing)}")
        idx = [self.columns.index(f) for f in features]
        return Fleet(list(features), {a: v[:, idx] for a, v in self.series.items()},
                     self.times, self.rul_at_end)

    def rul(self, asset: str) -> np.ndarray:
        """Remaining useful life at every row of `asset`, in time units."""
        t = self.times[asset]
        return (t[-1] - t) + self.rul_at_end.get(asset, 0.0)


# --------------------------------------------------------------------------- loaders

def cmapss_candidates(with_settings: bool, with_age: bool) -> list[str]:
    """The C-MAPSS columns offered as features, in order: the age, the settings, the sensors."""
    return [*([AGE] if with_age else []), *(SETTINGS if with_settings else []), *SENSORS]


def load_cmapss(path: str | Path, with_settings: bool = False, with_age: bool = False) -> Fleet:
    """A C-MAPSS train or test file. Candidate features are the 21 sensors; the three
    operational settings only with `with_settings` (in FD001 there is one operating condition,
    so settings 1-2 are noise and setting 3 is constant); the engine's age in cycles (AGE, the
    `cycle` column) first with `with_age`."""
    try:
        rows = read_cmapss(path)
    except CmapssFormatError as exc:
        raise DataError(str(exc)) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    candidates = cmapss_candidates(with_settings, with_age)
    idx = [COLUMNS.index(c) for c in candidates]
    series, times = {}, {}
    for unit in np.unique(rows[:, 0]):
        block = rows[rows[:, 0] == unit]
        name = str(int(unit))
        series[name] = block[:, idx]
        times[name] = block[:, 1]
    return Fleet(candidates, series, times)


def load_rul_truth(path: str | Path, fleet: Fleet) -> Fleet:
    """Attach a C-MAPSS RUL file (line i = remaining life of the i-th test unit, units in
    ascending order) to `fleet`."""
    path = Path(path)
    values = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 1:
            raise DataError(f"{path}:{lineno}: expected 1 column, found {len(fields)}")
        try:
            value = float(fields[0])
        except ValueError:
            raise DataError(f"{path}:{lineno}: not a number: {fields[0]!r}") from None
        if not math.isfinite(value) or value < 0:
            raise DataError(f"{path}:{lineno}: remaining life must be a number >= 0, "
                            f"got {fields[0]!r}")
        values.append(value)
    units = sorted(fleet.assets, key=int)
    if len(values) != len(units):
        raise DataError(f"{path}: {len(values)} remaining-life values for {len(units)} units")
    return Fleet(fleet.columns, fleet.series, fleet.times, dict(zip(units, values, strict=True)))


def load_csv(path: str | Path, asset_col: str, time_col: str,
             feature_cols: list[str] | None = None) -> Fleet:
    """A CSV file with a header row: one row per asset per tick. Features default to every
    column except the asset and time columns. Rows of one asset must have increasing time;
    assets may be interleaved."""
    path = Path(path)
    try:
        fh = open(path, newline="")  # noqa: SIM115 (closed by the `with` below)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path}: empty file (a header row is needed)") from None
        for col in (asset_col, time_col):
            if col not in header:
                raise DataError(f"{path}:1: no column {col!r} in the header ({', '.join(header)})")
        if feature_cols is None:
            feature_cols = [h for h in header if h not in (asset_col, time_col)]
        missing = [c for c in feature_cols if c not in header]
        if missing:
            raise DataError(f"{path}:1: no feature column(s) {', '.join(missing)} in the header")
        if not feature_cols:
            raise DataError(f"{path}:1: no feature columns")
        a_idx, t_idx = header.index(asset_col), header.index(time_col)
        f_idx = [header.index(c) for c in feature_cols]
        rows: dict[str, list[list[float]]] = {}
        stamps: dict[str, list[float]] = {}
        for lineno, fields in enumerate(reader, 2):
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise DataError(f"{path}:{lineno}: expected {len(header)} columns, "
                                f"found {len(fields)}")
            asset = fields[a_idx].strip()
            if not asset:
                raise DataError(f"{path}:{lineno}: empty asset id in column {asset_col!r}")
            values = []
            for col, i in ((time_col, t_idx), *zip(feature_cols, f_idx, strict=True)):
                try:
                    v = float(fields[i])
                except ValueError:
                    raise DataError(f"{path}:{lineno}: column {col!r} is not a number: "
                                    f"{fields[i]!r}") from None
                if not math.isfinite(v):
                    raise DataError(f"{path}:{lineno}: column {col!r} is NaN or infinite")
                values.append(v)
            t = values[0]
            previous = stamps.get(asset)
            if previous and t <= previous[-1]:
                raise DataError(f"{path}:{lineno}: asset {asset} time goes backwards "
                                f"({time_col} {t:g} after {previous[-1]:g})")
            stamps.setdefault(asset, []).append(t)
            rows.setdefault(asset, []).append(values[1:])
    if not rows:
        raise DataError(f"{path}: no data rows")
    return Fleet(list(feature_cols), {a: np.asarray(r, np.float64) for a, r in rows.items()},
                 {a: np.asarray(stamps[a], np.float64) for a in rows})


# --------------------------------------------------------------------------- regimes

def _kmeans(z: np.ndarray, k: int, rng: np.random.Generator,
            iterations: int = 100) -> tuple[np.ndarray, float]:
    """Lloyd's k-means with k-means++ seeding: (centres (k, S), inertia)."""
    centres = [z[rng.integers(len(z))]]
    for _ in range(1, k):
        _, dist = nearest_centre(z, np.asarray(centres))
        weight = dist ** 2
        total = weight.sum()
        pick = rng.choice(len(z), p=weight / total) if total > 0 else rng.integers(len(z))
        centres.append(z[pick])
    c = np.asarray(centres, np.float64)
    for _ in range(iterations):
        label, _ = nearest_centre(z, c)
        moved = np.array([z[label == j].mean(axis=0) if np.any(label == j) else c[j]
                          for j in range(k)])
        if np.allclose(moved, c, rtol=0, atol=1e-9):
            break
        c = moved
    _, dist = nearest_centre(z, c)
    return c, float((dist ** 2).sum())


def _best_kmeans(z: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    runs = [_kmeans(z, k, rng) for _ in range(KMEANS_RESTARTS)]
    return min(runs, key=lambda run: run[1])[0]


def silhouette(z: np.ndarray, label: np.ndarray) -> float:
    """Mean silhouette width of a clustering (0 for a single cluster); O(n^2) memory."""
    groups = np.unique(label)
    if len(groups) < 2:
        return 0.0
    dist = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(axis=-1))
    mean_to = np.stack([dist[:, label == g].mean(axis=1) for g in groups], axis=1)
    size = np.array([np.sum(label == g) for g in groups])
    own = np.searchsorted(groups, label)
    rows = np.arange(len(z))
    # a point's mean distance to its own cluster leaves itself out
    a = mean_to[rows, own] * size[own] / np.maximum(size[own] - 1, 1)
    mean_to[rows, own] = np.inf
    b = mean_to.min(axis=1)
    width = np.where(size[own] > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(width.mean())


def count_regimes(z: np.ndarray, seed: int = 0, max_regimes: int = MAX_REGIMES
                  ) -> tuple[int, dict[int, float]]:
    """The number of operating regimes in standardised settings z, and the silhouette of each
    k tried: the k > 1 with the best silhouette if it shows strong structure, else 1."""
    rng = np.random.default_rng(seed)
    sample = z[rng.choice(len(z), size=min(len(z), SILHOUETTE_ROWS), replace=False)]
    search = z[rng.choice(len(z), size=min(len(z), SEARCH_ROWS), replace=False)]
    scores: dict[int, float] = {}
    for k in range(2, min(max_regimes, len(np.unique(search, axis=0))) + 1):
        centres = _best_kmeans(search, k, seed)
        scores[k] = silhouette(sample, nearest_centre(sample, centres)[0])
    best = max(scores, key=scores.__getitem__, default=1)
    return (best if scores.get(best, 0.0) >= STRONG_SILHOUETTE else 1), scores


def fit_regimes(fleet: Fleet, n: int | None = None,
                method: Literal["minmax", "zscore"] = "zscore", seed: int = 0,
                settings: list[str] | None = None) -> Regimes:
    """Operating regimes of a training fleet: k-means on its standardised operational
    settings (`n` regimes, or as many as `count_regimes` finds), with per-regime statistics of
    every other column of the fleet (in fleet order; `Regimes.subset` keeps the chosen
    features). Settings default to the C-MAPSS setting columns present in the fleet."""
    settings = settings if settings is not None else [c for c in SETTINGS if c in fleet.columns]
    if not settings:
        raise DataError("finding regimes needs operational-setting columns "
                        f"({', '.join(SETTINGS)}); the data has none")
    if n is not None and not 1 <= n <= MAX_REGIMES:
        raise DataError(f"regimes: give a count between 1 and {MAX_REGIMES}, not {n}")
    if method not in ("minmax", "zscore"):
        raise ValueError(f"unknown normalisation method {method!r}")
    set_idx = [fleet.columns.index(c) for c in settings]
    other = [i for i, c in enumerate(fleet.columns) if c not in settings]
    if not other:
        raise DataError("the data has no columns besides the operational settings")
    allrows = np.concatenate(list(fleet.series.values()))
    raw = allrows[:, set_idx]
    set_offset = raw.mean(axis=0)
    std = raw.std(axis=0)
    set_scale = np.where(std > 1e-12, std, 1.0)
    z = (raw - set_offset) / set_scale
    k = n if n is not None else count_regimes(z, seed)[0]
    if len(np.unique(z, axis=0)) < k:
        raise DataError(f"cannot find {k} regimes: the settings take only "
                        f"{len(np.unique(z, axis=0))} distinct values")
    rng = np.random.default_rng(seed)
    search = z[rng.choice(len(z), size=min(len(z), SEARCH_ROWS), replace=False)]
    centres = _best_kmeans(search, k, seed)
    # refine on every row, then order the centres so regime numbers do not depend on the seed
    for _ in range(20):
        label, _ = nearest_centre(z, centres)
        centres = np.array([z[label == j].mean(axis=0) if np.any(label == j) else centres[j]
                            for j in range(k)])
    centres = centres[np.lexsort(centres.T[::-1])]
    label, dist = nearest_centre(z, centres)
    limit = max(LIMIT_SPREAD * float(np.quantile(dist, 0.999)), MIN_LIMIT)
    if k > 1:
        gaps = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))
        limit = max(limit, LIMIT_SEPARATION * float(gaps[np.triu_indices(k, 1)].min()))
    offsets, scales = [], []
    for j in range(k):
        rows = allrows[label == j][:, other]
        if len(rows) == 0:
            raise DataError(f"regime {j + 1} of {k} has no training rows; give fewer regimes")
        if method == "zscore":
            offset, spread = rows.mean(axis=0), rows.std(axis=0)
        else:
            offset, spread = rows.min(axis=0), rows.max(axis=0) - rows.min(axis=0)
        offsets.append([float(v) for v in offset])
        scales.append([float(v) if v > MIN_STD else 1.0 for v in spread])
    return Regimes(settings=list(settings), setting_offset=[float(v) for v in set_offset],
                   setting_scale=[float(v) for v in set_scale],
                   centres=[[float(v) for v in c] for c in centres], max_distance=limit,
                   method=method, offset=offsets, scale=scales)


def regime_features(fleet: Fleet, regimes: Regimes) -> list[str]:
    """The fleet columns `regimes` hold statistics for (all but the settings), in order."""
    return [c for c in fleet.columns if c not in regimes.settings]


def label_regimes(fleet: Fleet, regimes: Regimes) -> dict[str, np.ndarray]:
    """Each asset's regime per row (the fleet must hold the setting columns)."""
    idx = [fleet.columns.index(c) for c in regimes.settings]
    normaliser = Normaliser(regime_features(fleet, regimes), regimes=regimes)
    return {a: normaliser.assign(rows[:, idx])[0] for a, rows in fleet.series.items()}


# --------------------------------------------------------------------------- features, split

def choose_features(fleet: Fleet, min_std: float = MIN_STD,
                    min_distinct: int = MIN_DISTINCT,
                    regime_of: dict[str, np.ndarray] | None = None) -> list[str]:
    """Candidate features that vary on the training data. Dropped: a standard deviation below
    `min_std` (constant), or fewer than `min_distinct` distinct values (a reading that only
    toggles between two quantisation steps carries no trend). On FD001 this keeps the usual
    14 sensors: 2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21. With `regime_of` (each
    asset's regime per row) both tests apply within regimes (the median over regimes), so a
    sensor that only follows the operating point is dropped; on FD002 the same 14 remain."""
    allrows = np.concatenate(list(fleet.series.values()))
    if regime_of is None:
        groups = [allrows]
    else:
        label = np.concatenate([regime_of[a] for a in fleet.series])
        groups = [allrows[label == j] for j in np.unique(label)]
    keep = [name for i, name in enumerate(fleet.columns)
            if np.median([g[:, i].std() for g in groups]) >= min_std
            and np.median([len(np.unique(g[:, i])) for g in groups]) >= min_distinct]
    if not keep:
        raise DataError("every candidate feature is constant on the training data")
    return keep


def split_assets(assets: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split by asset, so no asset has rows on both sides. Returns (kept, held_out)."""
    if not 0 < fraction < 1:
        raise ValueError("fraction must be between 0 and 1")
    if len(assets) < 2:
        raise DataError(f"need at least 2 assets to split by asset, have {len(assets)}")
    order = np.random.default_rng(seed).permutation(len(assets))
    n_held = min(len(assets) - 1, max(1, round(len(assets) * fraction)))
    held = sorted((assets[i] for i in order[:n_held]), key=_natural)
    kept = sorted((assets[i] for i in order[n_held:]), key=_natural)
    return kept, held


def _natural(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def minmax_normalisation(fleet: Fleet) -> Normalisation:
    """Min-max statistics of `fleet` (the training split only); a constant column gets scale 1."""
    allrows = np.concatenate(list(fleet.series.values()))
    lo, hi = allrows.min(axis=0), allrows.max(axis=0)
    span = hi - lo
    scale = np.where(span > 1e-12, span, 1.0)
    return Normalisation(method="minmax", offset=[float(v) for v in lo],
                         scale=[float(v) for v in scale])


def training_stats(fleet: Fleet, normaliser: Normaliser | None = None) -> TrainingStats:
    """The training distribution of every feature of `fleet` (the training split, raw values),
    per operating regime where `normaliser` has regimes, recorded in the manifest so the cloud
    can tell when an asset's inputs drift away from it (contract/drift.py). The fleet's columns
    are the normaliser's (features, then settings), or only features without one."""
    rows = np.concatenate(list(fleet.series.values()))
    if normaliser is None or not normaliser.has_regimes:
        n = len(normaliser.features) if normaliser else rows.shape[1]
        return describe_training(rows[:, :n])
    regime, _ = normaliser.regimes_of(rows)
    assert normaliser.regimes is not None
    return describe_training(rows[:, :len(normaliser.features)], regime,
                             normaliser.regimes.count)


# --------------------------------------------------------------------------- windows, labels

@dataclass
class Windows:
    """Model inputs and targets, one entry per window (its last row is the labelled tick)."""

    x: np.ndarray          # (n, window, features) float32, normalised
    rul: np.ndarray        # (n,) remaining life at the window's last tick (uncapped)
    asset: np.ndarray      # (n,) asset id
    end_time: np.ndarray   # (n,) time of the window's last tick

    def __len__(self) -> int:
        return len(self.x)

    def labels(self, horizon: int) -> np.ndarray:
        """1 when the asset fails within `horizon` time units of the window's end."""
        return failure_label(self.rul, horizon)

    def rul_fraction(self, cap: float) -> np.ndarray:
        return rul_fraction(self.rul, cap)

    def take(self, mask: np.ndarray) -> Windows:
        return Windows(self.x[mask], self.rul[mask], self.asset[mask], self.end_time[mask])

    def plus(self, other: Windows) -> Windows:
        """Both sets of windows, these first."""
        return Windows(np.concatenate([self.x, other.x]), np.concatenate([self.rul, other.rul]),
                       np.concatenate([self.asset, other.asset]),
                       np.concatenate([self.end_time, other.end_time]))


def failure_label(rul: np.ndarray, horizon: int) -> np.ndarray:
    return (np.asarray(rul) <= horizon).astype(np.float32)


def rul_fraction(rul: np.ndarray, cap: float) -> np.ndarray:
    """The RUL head's target: min(RUL, cap) / cap, in [0, 1]."""
    return (np.minimum(np.asarray(rul, np.float64), cap) / cap).astype(np.float32)


Scaling = Normaliser | Normalisation


def _normaliser(norm: Scaling, fleet: Fleet) -> Normaliser:
    """A bare `Normalisation` applies to a fleet that holds exactly the features."""
    return norm if isinstance(norm, Normaliser) else Normaliser(fleet.columns, norm)


def normalise_fleet(fleet: Fleet, norm: Scaling) -> tuple[dict[str, np.ndarray], int]:
    """Each asset's rows as model input, with the count of out-of-regime rows. The fleet's
    columns must be the normaliser's `columns` (features, then settings)."""
    normaliser = _normaliser(norm, fleet)
    if fleet.columns != normaliser.columns:
        raise DataError(f"the data columns ({', '.join(fleet.columns)}) are not the model's "
                        f"({', '.join(normaliser.columns)})")
    out, flagged = {}, 0
    for asset, rows in fleet.series.items():
        out[asset], far = normaliser.apply(rows)
        flagged += int(far.sum())
    return out, flagged


def all_windows(fleet: Fleet, norm: Scaling, window: int) -> Windows:
    """Every full window of every asset; an asset shorter than the window contributes one
    window padded at the front ("repeat-first"), as edge and cloud do. Rows are normalised
    one by one, so windowing before or after normalising gives the same arrays."""
    xs, ruls, assets, ends = [], [], [], []
    normalised, _ = normalise_fleet(fleet, norm)
    for asset in fleet.series:
        values = normalised[asset]
        rul, times = fleet.rul(asset), fleet.times[asset]
        if len(values) >= window:
            xs.append(sliding_windows(values, window))
            ruls.append(rul[window - 1:])
            ends.append(times[window - 1:])
        else:
            xs.append(pad_front(values, window)[None])
            ruls.append(rul[-1:])
            ends.append(times[-1:])
        assets.append(np.full(len(xs[-1]), asset, dtype=object))
    return Windows(np.concatenate(xs).astype(np.float32), np.concatenate(ruls),
                   np.concatenate(assets), np.concatenate(ends))


def last_windows(fleet: Fleet, norm: Scaling, window: int) -> Windows:
    """The window ending at each asset's last row (padded if the asset is short): the standard
    C-MAPSS test protocol."""
    xs, ruls, assets, ends = [], [], [], []
    normalised, _ = normalise_fleet(fleet, norm)
    for asset in fleet.series:
        xs.append(pad_front(normalised[asset], window))
        ruls.append(fleet.rul(asset)[-1])
        assets.append(asset)
        ends.append(fleet.times[asset][-1])
    return Windows(np.stack(xs).astype(np.float32), np.asarray(ruls, np.float64),
                   np.asarray(assets, dtype=object), np.asarray(ends, np.float64))


def stratified_sample(windows: Windows, n: int, seed: int,
                      edges: tuple[float, ...] = (10, 30, 60, 100, 125)) -> Windows:
    """Up to `n` windows drawn evenly from life stages (bins of remaining life), so a
    quantization calibration sees healthy, degrading and failing machines alike."""
    rng = np.random.default_rng(seed)
    bins = np.digitize(windows.rul, edges)
    groups = [np.flatnonzero(bins == b) for b in np.unique(bins)]
    per_group = max(1, n // max(1, len(groups)))
    chosen = [rng.choice(g, size=min(per_group, len(g)), replace=False) for g in groups]
    idx = np.sort(np.concatenate(chosen))
    return windows.take(idx)


# --------------------------------------------------------------------------- prepared sets

@dataclass
class TestSet:
    """`scored` holds the windows the accuracy metrics are computed on; `every` holds every
    window of the test assets (used for the edge-vs-float decision agreement and the plots)."""

    scored: Windows
    every: Windows
    protocol: str


@dataclass
class Prepared:
    """Windows ready to train on. `normalisation` (one regime) or `regimes` is set, never
    both, as in the manifest; `normaliser` applies whichever it is."""

    dataset: str
    source_files: dict[str, Path]
    features: list[str]
    normalisation: Normalisation | None
    window: int
    train: Windows
    val: Windows
    test: TestSet
    train_assets: list[str]
    val_assets: list[str]
    test_assets: list[str]
    regimes: Regimes | None = None
    out_of_regime: dict[str, int] = field(default_factory=dict)  # split -> ticks flagged
    training_stats: TrainingStats | None = None

    @property
    def normaliser(self) -> Normaliser:
        return Normaliser(self.features, self.normalisation, self.regimes)

    @property
    def columns(self) -> list[str]:
        """The raw columns of a tick (features, then the settings regimes need)."""
        return self.normaliser.columns

    @property
    def scaling_note(self) -> str:
        """One line for the training log: regimes, features, ticks out of regime."""
        if self.regimes is None:
            return f"one operating regime: {len(self.features)} features, global min-max"
        flagged = ", ".join(f"{k} {v}" for k, v in self.out_of_regime.items())
        return (f"{self.regimes.count} operating regimes from "
                f"{', '.join(self.regimes.settings)}: {len(self.features)} features, "
                f"{self.regimes.method} per regime; ticks out of regime: {flagged}")


def cmapss_paths(data_dir: str | Path, subset: str,
                 needed: tuple[str, ...] = ("train", "test", "RUL")) -> dict[str, Path]:
    data_dir = Path(data_dir)
    paths = {name: data_dir / f"{name}_{subset}.txt" for name in needed}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"C-MAPSS {subset} file(s) not found: {', '.join(missing)} "
                        "(pass --data DIR or set PDM_DATA_DIR)")
    return paths


def _cmapss_protocol(subset: str, units: int) -> str:
    return (f"C-MAPSS {subset}: last window of each of the {units} test units against "
            f"RUL_{subset}.txt")


def cmapss_test_set(data_dir: str | Path, subset: str, normaliser: Normaliser,
                    window: int) -> TestSet:
    """The standard C-MAPSS test protocol: each test unit's last window against the RUL file."""
    paths = cmapss_paths(data_dir, subset, ("test", "RUL"))
    test = load_rul_truth(paths["RUL"], load_cmapss(paths["test"], with_settings=True,
                                                    with_age=True))
    test = test.select(normaliser.columns)
    return TestSet(last_windows(test, normaliser, window), all_windows(test, normaliser, window),
                   _cmapss_protocol(subset, len(test.assets)))


def csv_test_set(path: str | Path, asset_col: str, time_col: str, normaliser: Normaliser,
                 window: int, assets: list[str] | None = None) -> TestSet:
    """Run-to-failure CSV assets as a test set: every window of each asset (the last window
    of a run-to-failure asset always has remaining life 0, so it alone would test nothing)."""
    fleet = load_csv(path, asset_col, time_col, normaliser.columns)
    if assets is not None:
        fleet = fleet.subset(assets)
    every = all_windows(fleet, normaliser, window)
    return TestSet(every, every, f"CSV {Path(path).name}: every window of the "
                                 f"{len(fleet.assets)} held-out assets (run to failure)")


def scaling_for(train_fleet: Fleet, candidates: list[str], regimes: int | None = None,
                seed: int = 0) -> tuple[list[str], Normalisation | None, Regimes | None]:
    """Features and their statistics from the training split: (features, normalisation, None)
    for one operating regime (global min-max, as before regimes existed), or (features, None,
    regimes) with per-regime z-scores. `regimes` None: found from the data (needs the
    operational-setting columns in the fleet); 1: one regime whatever the settings."""
    settings = [c for c in SETTINGS if c in train_fleet.columns and c not in candidates]
    if regimes != 1 and settings:
        found = fit_regimes(train_fleet.select([*candidates, *settings]), regimes, seed=seed,
                            settings=settings)
        if found.count > 1:
            features = choose_features(train_fleet.select(candidates),
                                       regime_of=label_regimes(train_fleet.select(
                                           [*candidates, *settings]), found))
            return features, None, found.subset([candidates.index(f) for f in features])
    elif regimes is not None and regimes > 1:
        raise DataError(f"--regimes {regimes} needs operational-setting columns "
                        f"({', '.join(SETTINGS)}); the data has none")
    features = choose_features(train_fleet.select(candidates))
    return features, minmax_normalisation(train_fleet.select(features)), None


def _prepared(dataset: str, source_files: dict[str, Path], train_fleet: Fleet, val_fleet: Fleet,
              test_fleet: Fleet, candidates: list[str], window: int, regimes: int | None,
              seed: int, protocol: str, every_test_window: bool) -> Prepared:
    features, norm, found = scaling_for(train_fleet, candidates, regimes, seed)
    normaliser = Normaliser(features, norm, found)
    cols = normaliser.columns
    train_fleet, val_fleet, test_fleet = (f.select(cols) for f in (train_fleet, val_fleet,
                                                                    test_fleet))
    every = all_windows(test_fleet, normaliser, window)
    scored = every if every_test_window else last_windows(test_fleet, normaliser, window)
    flagged = {name: normalise_fleet(f, normaliser)[1]
               for name, f in (("train", train_fleet), ("val", val_fleet), ("test", test_fleet))}
    return Prepared(dataset, source_files, features, norm, window,
                    all_windows(train_fleet, normaliser, window),
                    all_windows(val_fleet, normaliser, window), TestSet(scored, every, protocol),
                    train_fleet.assets, val_fleet.assets, test_fleet.assets, found, flagged,
                    training_stats(train_fleet, normaliser))


def prepare_cmapss(data_dir: str | Path, subset: str, window: int, val_fraction: float = 0.2,
                   seed: int = 0, with_settings: bool = False,
                   max_units: int | None = None, regimes: int | None = None,
                   with_age: bool = True) -> Prepared:
    """Train/validation windows from train_<subset> split by unit, test set from test_<subset>.
    `max_units` keeps only the first units of both files (for quick runs). `regimes`: the
    number of operating regimes (None: found from the settings; FD001 has 1, FD002 6).
    `with_settings` also offers the settings as model features (single regime only);
    `with_age` offers the engine's age in cycles (AGE) as the first feature."""
    paths = cmapss_paths(data_dir, subset)
    train_all = load_cmapss(paths["train"], with_settings=True, with_age=True)
    test_fleet = load_rul_truth(paths["RUL"], load_cmapss(paths["test"], with_settings=True,
                                                          with_age=True))
    if max_units:
        train_all = train_all.subset(train_all.assets[:max_units])
        test_fleet = test_fleet.subset(test_fleet.assets[:max_units])
    train_ids, val_ids = split_assets(train_all.assets, val_fraction, seed)
    candidates = cmapss_candidates(with_settings, with_age)
    if with_settings and regimes is None:
        regimes = 1
    return _prepared(f"C-MAPSS {subset}", dict(paths), train_all.subset(train_ids),
                     train_all.subset(val_ids), test_fleet, candidates, window, regimes, seed,
                     _cmapss_protocol(subset, len(test_fleet.assets)), every_test_window=False)


def prepare_csv(path: str | Path, asset_col: str, time_col: str,
                feature_cols: list[str] | None, window: int, val_fraction: float = 0.2,
                test_fraction: float = 0.2, seed: int = 0,
                regimes: int | None = None) -> Prepared:
    """Run-to-failure CSV: assets split three ways (train / validation / test), seeded.
    Columns named like the C-MAPSS settings (setting_1..setting_3) are operational settings:
    regimes are found from them and they are not model features."""
    fleet = load_csv(path, asset_col, time_col, feature_cols)
    if len(fleet.assets) < 3:
        raise DataError(f"{path}: need at least 3 assets (train, validation, test), "
                        f"found {len(fleet.assets)}")
    rest, test_ids = split_assets(fleet.assets, test_fraction, seed)
    train_ids, val_ids = split_assets(rest, val_fraction, seed + 1)
    candidates = [c for c in fleet.columns if c not in SETTINGS]
    if not candidates:
        raise DataError(f"{path}: no feature columns besides the operational settings")
    return _prepared(f"CSV {Path(path).name}", {Path(path).name: Path(path)},
                     fleet.subset(train_ids), fleet.subset(val_ids), fleet.subset(test_ids),
                     candidates, window, regimes, seed,
                     f"CSV {Path(path).name}: every window of the {len(test_ids)} held-out "
                     "assets (run to failure)", every_test_window=True)
