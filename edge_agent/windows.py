"""A per-asset ring buffer of the last W ticks (pure).

Rows are kept as read, not normalised: each model normalises with its own manifest, so a
swapped-in or shadow model trained on other statistics still sees its own inputs."""

from __future__ import annotations

import numpy as np

from contract.manifest import Manifest


class AssetWindow:
    """The last `window` ticks of one asset."""

    def __init__(self, manifest: Manifest) -> None:
        self.window = manifest.window
        self._buf = np.zeros((2 * self.window, len(manifest.features)), np.float32)
        self._end = 0  # rows written into _buf since the last compaction
        self.count = 0  # ticks seen in total

    def push(self, row: np.ndarray) -> None:
        # A double-length buffer lets `view` return a contiguous slice without copying on read;
        # it is compacted once every W pushes.
        if self._end == len(self._buf):
            self._buf[: self.window - 1] = self._buf[self._end - self.window + 1 : self._end]
            self._end = self.window - 1
        self._buf[self._end] = row
        self._end += 1
        self.count += 1

    @property
    def full(self) -> bool:
        return self.count >= self.window

    def view(self) -> np.ndarray:
        """The current raw window (W, F); only meaningful when `full`."""
        return self._buf[self._end - self.window : self._end]
