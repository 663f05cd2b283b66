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

import numpy as np

from contract.cmapss import COLUMNS, SENSORS, SETTINGS, CmapssFormatError, read_cmapss
from contract.drift import describe_training
from contract.manifest import Normalisation, TrainingStats
from contract.preprocess import pad_front, sliding_windows

DEFAULT_HORIZON = 30
DEFAULT_RUL_CAP = 125.0
MIN_STD = 1e-6
MIN_DISTINCT = 3


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

def load_cmapss(path: str | Path, with_settings: bool = False) -> Fleet:
    """A C-MAPSS train or test file. Candidate features are the 21 sensors; the three
    operational settings only with `with_settings` (in FD001 there is one operating condition,
    so settings 1-2 are noise and setting 3 is constant)."""
    try:
        rows = read_cmapss(path)
    except CmapssFormatError as exc:
        raise DataError(str(exc)) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    candidates = [*SETTINGS, *SENSORS] if with_settings else list(SENSORS)
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


# --------------------------------------------------------------------------- features, split

def choose_features(fleet: Fleet, min_std: float = MIN_STD,
                    min_distinct: int = MIN_DISTINCT) -> list[str]:
    """Candidate features that vary on the training data. Dropped: a standard deviation below
    `min_std` (constant), or fewer than `min_distinct` distinct values (a reading that only
    toggles between two quantisation steps carries no trend). On FD001 this keeps the usual
    14 sensors: 2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21."""
    allrows = np.concatenate(list(fleet.series.values()))
    keep = [name for i, name in enumerate(fleet.columns)
            if allrows[:, i].std() >= min_std and len(np.unique(allrows[:, i])) >= min_distinct]
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


def training_stats(fleet: Fleet) -> TrainingStats:
    """The training distribution of every feature of `fleet` (the training split, raw values,
    features in manifest order), recorded in the manifest so the cloud can tell when an
    asset's inputs drift away from it (contract/drift.py)."""
    return describe_training(np.concatenate(list(fleet.series.values())))


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


def failure_label(rul: np.ndarray, horizon: int) -> np.ndarray:
    return (np.asarray(rul) <= horizon).astype(np.float32)


def rul_fraction(rul: np.ndarray, cap: float) -> np.ndarray:
    """The RUL head's target: min(RUL, cap) / cap, in [0, 1]."""
    return (np.minimum(np.asarray(rul, np.float64), cap) / cap).astype(np.float32)


def all_windows(fleet: Fleet, norm: Normalisation, window: int) -> Windows:
    """Every full window of every asset; an asset shorter than the window contributes one
    window padded at the front ("repeat-first"), as edge and cloud do."""
    xs, ruls, assets, ends = [], [], [], []
    for asset, rows in fleet.series.items():
        values = norm.apply(rows)
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


def last_windows(fleet: Fleet, norm: Normalisation, window: int) -> Windows:
    """The window ending at each asset's last row (padded if the asset is short): the standard
    C-MAPSS test protocol."""
    xs, ruls, assets, ends = [], [], [], []
    for asset, rows in fleet.series.items():
        xs.append(pad_front(norm.apply(rows), window))
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
    dataset: str
    source_files: dict[str, Path]
    features: list[str]
    normalisation: Normalisation
    window: int
    train: Windows
    val: Windows
    test: TestSet
    train_assets: list[str]
    val_assets: list[str]
    test_assets: list[str]
    training_stats: TrainingStats | None = None


def cmapss_paths(data_dir: str | Path, subset: str,
                 needed: tuple[str, ...] = ("train", "test", "RUL")) -> dict[str, Path]:
    data_dir = Path(data_dir)
    paths = {name: data_dir / f"{name}_{subset}.txt" for name in needed}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"C-MAPSS {subset} file(s) not found: {', '.join(missing)} "
                        "(pass --data DIR or set PDM_DATA_DIR)")
    return paths


def cmapss_test_set(data_dir: str | Path, subset: str, features: list[str],
                    norm: Normalisation, window: int) -> TestSet:
    """The standard C-MAPSS test protocol: each test unit's last window against the RUL file."""
    paths = cmapss_paths(data_dir, subset, ("test", "RUL"))
    with_settings = any(f in SETTINGS for f in features)
    test = load_rul_truth(paths["RUL"], load_cmapss(paths["test"], with_settings))
    test = test.select(features)
    return TestSet(last_windows(test, norm, window), all_windows(test, norm, window),
                   f"C-MAPSS {subset}: last window of each of the {len(test.assets)} test units "
                   f"against RUL_{subset}.txt")


def csv_test_set(path: str | Path, asset_col: str, time_col: str, features: list[str],
                 norm: Normalisation, window: int, assets: list[str] | None = None) -> TestSet:
    """Run-to-failure CSV assets as a test set: every window of each asset (the last window
    of a run-to-failure asset always has remaining life 0, so it alone would test nothing)."""
    fleet = load_csv(path, asset_col, time_col, features)
    if assets is not None:
        fleet = fleet.subset(assets)
    every = all_windows(fleet, norm, window)
    return TestSet(every, every, f"CSV {Path(path).name}: every window of the "
                                 f"{len(fleet.assets)} held-out assets (run to failure)")


def prepare_cmapss(data_dir: str | Path, subset: str, window: int, val_fraction: float = 0.2,
                   seed: int = 0, with_settings: bool = False,
                   max_units: int | None = None) -> Prepared:
    """Train/validation windows from train_<subset> split by unit, test set from test_<subset>.
    `max_units` keeps only the first units of both files (for quick runs)."""
    paths = cmapss_paths(data_dir, subset)
    train_all = load_cmapss(paths["train"], with_settings)
    test_fleet = load_rul_truth(paths["RUL"], load_cmapss(paths["test"], with_settings))
    if max_units:
        train_all = train_all.subset(train_all.assets[:max_units])
        test_fleet = test_fleet.subset(test_fleet.assets[:max_units])
    train_ids, val_ids = split_assets(train_all.assets, val_fraction, seed)
    train_fleet = train_all.subset(train_ids)
    features = choose_features(train_fleet)
    val_fleet = train_all.subset(val_ids).select(features)
    train_fleet = train_fleet.select(features)
    norm = minmax_normalisation(train_fleet)
    test_fleet = test_fleet.select(features)
    test = TestSet(last_windows(test_fleet, norm, window), all_windows(test_fleet, norm, window),
                   f"C-MAPSS {subset}: last window of each of the {len(test_fleet.assets)} test "
                   f"units against RUL_{subset}.txt")
    return Prepared(f"C-MAPSS {subset}", dict(paths), features, norm, window,
                    all_windows(train_fleet, norm, window), all_windows(val_fleet, norm, window),
                    test, train_ids, val_ids, test_fleet.assets, training_stats(train_fleet))


def prepare_csv(path: str | Path, asset_col: str, time_col: str,
                feature_cols: list[str] | None, window: int, val_fraction: float = 0.2,
                test_fraction: float = 0.2, seed: int = 0) -> Prepared:
    """Run-to-failure CSV: assets split three ways (train / validation / test), seeded."""
    fleet = load_csv(path, asset_col, time_col, feature_cols)
    if len(fleet.assets) < 3:
        raise DataError(f"{path}: need at least 3 assets (train, validation, test), "
                        f"found {len(fleet.assets)}")
    rest, test_ids = split_assets(fleet.assets, test_fraction, seed)
    train_ids, val_ids = split_assets(rest, val_fraction, seed + 1)
    train_fleet = fleet.subset(train_ids)
    features = choose_features(train_fleet)
    norm = minmax_normalisation(train_fleet.select(features))
    test_fleet = fleet.subset(test_ids).select(features)
    every = all_windows(test_fleet, norm, window)
    test = TestSet(every, every, f"CSV {Path(path).name}: every window of the {len(test_ids)} "
                                 "held-out assets (run to failure)")
    return Prepared(f"CSV {Path(path).name}", {Path(path).name: Path(path)}, features, norm,
                    window, all_windows(train_fleet.select(features), norm, window),
                    all_windows(fleet.subset(val_ids).select(features), norm, window), test,
                    train_ids, val_ids, test_ids, training_stats(train_fleet.select(features)))
