"""Window construction and normalisation, the same in converter, edge and cloud.

Raw rows hold a manifest's `columns` (its features, then any operational settings the regimes
need). `Normaliser` is the one implementation that turns such rows into model input: with one
regime it applies the global statistics; with several it assigns each tick the regime nearest to
its settings and normalises with that regime's statistics. A tick out of every regime gets the
nearest regime's statistics and is flagged, so callers count and log it (never dropped: the
window stays whole, and the flag says its score is less trustworthy).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import numpy as np

from contract.manifest import Manifest, Normalisation, Regimes


def pad_front(values: np.ndarray, window: int) -> np.ndarray:
    """Repeat the first row so a short history fills a window ("repeat-first" padding)."""
    values = np.asarray(values, np.float32)
    if len(values) >= window:
        return values[-window:]
    pad = np.repeat(values[:1], window - len(values), axis=0)
    return np.concatenate([pad, values], axis=0)


def sliding_windows(values: np.ndarray, window: int) -> np.ndarray:
    """All windows of `window` consecutive rows: shape (n - window + 1, window, features)."""
    values = np.asarray(values, np.float32)
    if len(values) < window:
        return np.empty((0, window, values.shape[1]), np.float32)
    view = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def nearest_centre(z: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest centre, Euclidean distance to it) for each row of standardised
    settings z (n, S) against centres (k, S). The converter's clustering uses this too, so a
    tick lands in the same regime in training, at the edge and in the cloud."""
    diff = np.asarray(z, np.float64)[:, None, :] - np.asarray(centres, np.float64)[None, :, :]
    dist2 = np.einsum("nks,nks->nk", diff, diff)
    return dist2.argmin(axis=1), np.sqrt(dist2.min(axis=1))


class Normaliser:
    """Raw rows (..., len(columns)) -> model input (..., len(features)) and, per row, whether
    its settings are out of every regime. Built once per model: the statistics are held as
    arrays, so a window costs a few vector operations."""

    def __init__(self, features: list[str] | tuple[str, ...],
                 normalisation: Normalisation | None = None,
                 regimes: Regimes | None = None) -> None:
        if (normalisation is None) == (regimes is None):
            raise ValueError("a normaliser needs exactly one of normalisation and regimes")
        self.features = list(features)
        self.regimes = regimes
        if regimes is None:
            assert normalisation is not None
            self.columns = list(self.features)
            self._offset = np.asarray(normalisation.offset, np.float32)[None, :]
            self._scale = np.asarray(normalisation.scale, np.float32)[None, :]
            self._settings_at: list[int] | slice = []
        else:
            if regimes.width != len(self.features):
                raise ValueError(f"regimes have statistics for {regimes.width} features, "
                                 f"the model has {len(self.features)}")
            self.columns = [*self.features,
                            *(s for s in regimes.settings if s not in self.features)]
            self._offset = np.asarray(regimes.offset, np.float32)
            self._scale = np.asarray(regimes.scale, np.float32)
            at = [self.columns.index(s) for s in regimes.settings]
            # the settings usually close the row: a slice reads them without a copy
            contiguous = at == list(range(at[0], at[0] + len(at)))
            self._settings_at = slice(at[0], at[0] + len(at)) if contiguous else at
            self._set_offset = np.asarray(regimes.setting_offset, np.float64)
            self._set_scale = np.asarray(regimes.setting_scale, np.float64)
            self._centres = np.asarray(regimes.centres, np.float64)
            self._limit = regimes.max_distance

    @classmethod
    def of(cls, manifest: Manifest) -> Normaliser:
        return cls(manifest.features, manifest.normalisation, manifest.regimes)

    @property
    def has_regimes(self) -> bool:
        return self.regimes is not None

    def assign(self, settings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(regime index, standardised distance to its centre) per row of raw settings
        (n, len(regimes.settings)); all regime 0 at distance 0 with one regime."""
        settings = np.asarray(settings, np.float64)
        if self.regimes is None:
            return np.zeros(len(settings), np.intp), np.zeros(len(settings))
        return nearest_centre((settings - self._set_offset) / self._set_scale, self._centres)

    def regimes_of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(regime index, out-of-regime mask) per raw row (n, len(columns)): the regime whose
        statistics `apply` uses for it (drift checks compare each regime with its own)."""
        rows = np.asarray(rows)
        if self.regimes is None:
            return np.zeros(len(rows), np.intp), np.zeros(len(rows), bool)
        regime, dist = self.assign(rows[:, self._settings_at])
        return regime, dist > self._limit

    def apply(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(model input float32 (..., F), out-of-regime mask (...) bool) for raw rows."""
        rows = np.asarray(rows, np.float32)
        n_cols, n_feat = len(self.columns), len(self.features)
        if rows.shape[-1] != n_cols:
            raise ValueError(f"rows have {rows.shape[-1]} columns, the model needs {n_cols} "
                             f"({', '.join(self.columns)})")
        lead = rows.shape[:-1]
        flat = rows.reshape(-1, n_cols)
        if self.regimes is None:
            x = (flat - self._offset[0]) / self._scale[0]
            return x.reshape(*lead, n_feat), np.zeros(lead, bool)
        regime, dist = self.assign(flat[:, self._settings_at])
        x = (flat[:, :n_feat] - self._offset[regime]) / self._scale[regime]
        return x.reshape(*lead, n_feat), (dist > self._limit).reshape(lead)

    def out_of_regime(self, row: np.ndarray) -> bool:
        """Whether one raw row's settings are far from every regime (False with one regime)."""
        if self.regimes is None:
            return False
        _, dist = self.assign(np.asarray(row, np.float64)[self._settings_at][None, :])
        return bool(dist[0] > self._limit)

    def neutral_rows(self, n: int) -> np.ndarray:
        """`n` raw rows at the first regime's centre and offsets: a harmless probe input."""
        row = np.zeros(len(self.columns), np.float32)
        row[: len(self.features)] = self._offset[0]
        if self.regimes is not None:
            row[self._settings_at] = self._centres[0] * self._set_scale + self._set_offset
        return np.tile(row, (n, 1))


class OutOfRegimeLog:
    """When to log out-of-regime ticks: the first at once, then at most one line per
    `interval` seconds carrying the count since the last line, so a machine running at an
    unknown operating point for hours is reported, not repeated at every tick."""

    def __init__(self, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: float | None = None
        self._unreported = 0

    def note(self, count: int, example: str) -> str | None:
        """Record `count` flagged ticks (`example` names one); a log line when one is due."""
        if count <= 0:
            return None
        self._unreported += count
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            return None
        self._last, total, self._unreported = now, self._unreported, 0
        return (f"{total} tick(s) out of every operating regime (e.g. {example}); scored with "
                "the nearest regime's statistics")


def normalise(rows: np.ndarray, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """Raw rows (..., len(manifest.columns)) -> (model input (..., F), out-of-regime mask)."""
    return Normaliser.of(manifest).apply(rows)


def normalised_window(raw_ticks: np.ndarray, manifest: Manifest) -> np.ndarray:
    """The model input for the window ending at the last of `raw_ticks` (un-normalised rows)."""
    return normalise(pad_front(raw_ticks, manifest.window), manifest)[0]


def rul_from_output(rul_fraction: np.ndarray | float, manifest: Manifest) -> np.ndarray:
    return np.clip(np.asarray(rul_fraction, np.float32), 0.0, 1.0) * manifest.rul_cap


@functools.cache
def _integer_bounds(dtype: np.dtype) -> tuple[float, float]:
    info = np.iinfo(dtype)
    return float(info.min), float(info.max)


def to_model_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float windows as the tensor a TFLite model takes (`detail`: the interpreter's input
    details): quantized with the input's own scale and zero point when the model is integer,
    unchanged otherwise. The converter's parity gate and the gateway share it, so the gate
    measures exactly what the gateway runs. In-place ufuncs and cached bounds: np.iinfo and
    np.clip's wrapper cost as much as one invoke of a small int8 model."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return np.asarray(x, dtype)
    scale, zero = detail["quantization"]
    q = np.asarray(x, np.float32) / scale
    q += zero
    np.rint(q, out=q)
    low, high = _integer_bounds(dtype)
    np.maximum(q, low, out=q)
    np.minimum(q, high, out=q)
    return q.astype(dtype)


def from_model_output(y: np.ndarray, detail: dict) -> np.ndarray:
    """The model's output tensor as float32, dequantized when the model is integer."""
    if np.dtype(detail["dtype"]).kind == "f":
        return np.asarray(y, np.float32)
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale
