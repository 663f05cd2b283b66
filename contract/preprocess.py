"""Window construction and normalisation, the same in converter, edge and cloud."""

from __future__ import annotations

import numpy as np

from contract.manifest import Manifest


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


def normalised_window(raw_ticks: np.ndarray, manifest: Manifest) -> np.ndarray:
    """The model input for the window ending at the last of `raw_ticks` (un-normalised rows)."""
    return manifest.normalisation.apply(pad_front(raw_ticks, manifest.window))


def rul_from_output(rul_fraction: np.ndarray | float, manifest: Manifest) -> np.ndarray:
    return np.clip(np.asarray(rul_fraction, np.float32), 0.0, 1.0) * manifest.rul_cap
