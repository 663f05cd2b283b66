"""A per-asset ring buffer of the last W ticks (pure).

Rows are kept as read, not normalised: each model normalises with its own manifest, so a
swapped-in or shadow model trained on other statistics still sees its own inputs. A row holds
the manifest's `columns`: the features, then any operational settings its regimes need. The
tick times and the edge scores ride along, so an escalated window can be sent as it stands."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contract.manifest import Manifest


@dataclass(frozen=True)
class WindowCopy:
    """One window's ticks, oldest first: times, raw values (W, C) and the edge's scores."""

    times: np.ndarray
    values: np.ndarray
    probability: np.ndarray
    rul: np.ndarray


class AssetWindow:
    """The last `window` ticks of one asset."""

    def __init__(self, manifest: Manifest) -> None:
        self.window = manifest.window
        self._buf = np.zeros((2 * self.window, len(manifest.columns)), np.float32)
        self._times = np.zeros(2 * self.window, np.float64)
        self._scores = np.full((2 * self.window, 2), np.nan, np.float32)
        self._end = 0  # rows written into _buf since the last compaction
        self.count = 0  # ticks seen in total

    def push(self, row: np.ndarray, time: float = 0.0) -> None:
        # A double-length buffer lets `view` return a contiguous slice without copying on read;
        # it is compacted once every W pushes.
        if self._end == len(self._buf):
            keep = slice(self._end - self.window + 1, self._end)
            for arr in (self._buf, self._times, self._scores):
                arr[: self.window - 1] = arr[keep]
            self._end = self.window - 1
        self._buf[self._end] = row
        self._times[self._end] = time
        self._scores[self._end] = np.nan
        self._end += 1
        self.count += 1

    def score_last(self, probability: float, rul: float) -> None:
        """Record the edge's scores of the window ending at the newest tick."""
        self._scores[self._end - 1] = probability, rul

    @property
    def full(self) -> bool:
        return self.count >= self.window

    def view(self) -> np.ndarray:
        """The current raw window (W, C); only meaningful when `full`."""
        return self._buf[self._end - self.window : self._end]

    def copy(self) -> WindowCopy:
        rows = slice(self._end - self.window, self._end)
        scores = self._scores[rows]
        return WindowCopy(self._times[rows].copy(), self._buf[rows].copy(),
                          scores[:, 0].copy(), scores[:, 1].copy())
