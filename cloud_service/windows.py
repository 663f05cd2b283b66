"""The pure part of cloud scoring: which windows are complete, how they are rebuilt from stored
ticks, and how pending windows are taken in batches. No sockets, no SQLite, no TensorFlow.

A window is named by the seq of its last tick; the window ending at `s` is complete when the
ticks `s - W + 1 .. s` are all stored. The cloud scores only complete windows (the edge pads
short histories, the cloud does not), and every complete window exactly once.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from contract.manifest import Manifest
from contract.preprocess import normalise

AssetKey = tuple[str, str]  # (gateway, asset)


def complete_window_ends(seqs: Sequence[int] | np.ndarray, window: int,
                         lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """The seqs `s` (optionally within lo..hi) whose window `s-W+1 .. s` lies wholly in `seqs`.

    `seqs` must be sorted and unique (as read from the store's primary key). Because seqs are
    unique integers, the window ending at seqs[i] is complete exactly when the tick W-1 places
    earlier has seq seqs[i] - (W-1).
    """
    arr = np.asarray(seqs, np.int64)
    if len(arr) < window:
        return np.empty(0, np.int64)
    ends = arr[window - 1:]
    ends = ends[ends - arr[: len(arr) - window + 1] == window - 1]
    if lo is not None:
        ends = ends[ends >= lo]
    if hi is not None:
        ends = ends[ends <= hi]
    return ends


def candidate_range(first_seq: int, last_seq: int, window: int) -> tuple[int, int]:
    """Window ends that new ticks first_seq..last_seq can have completed: a window becomes
    complete only when its last missing tick arrives, and that tick lies inside it."""
    return max(first_seq, window - 1), last_seq + window - 1


def ticks_needed(ends_lo: int, ends_hi: int, window: int) -> tuple[int, int]:
    """The tick seqs to read to judge (or build) windows ending in ends_lo..ends_hi."""
    return max(ends_lo - window + 1, 0), ends_hi


@dataclass(frozen=True)
class FeatureMap:
    """Reorders one stored feature set into the manifest's `columns` (its features, then the
    operational settings its regimes need)."""

    index: np.ndarray | None  # None: the stored set lacks a feature the model needs
    missing: tuple[str, ...] = ()

    @classmethod
    def build(cls, stored: Sequence[str], wanted: Sequence[str]) -> FeatureMap:
        position = {name: i for i, name in enumerate(stored)}
        missing = tuple(f for f in wanted if f not in position)
        if missing:
            return cls(None, missing)
        return cls(np.array([position[f] for f in wanted], np.intp))


def assemble_windows(seqs: np.ndarray, rows: np.ndarray, ends: Iterable[int],
                     manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """Normalised model inputs (n, W, F) for the windows ending at `ends`, and per window
    whether its last tick is out of every operating regime (each tick ends one window, so
    counting these counts each tick once).

    `seqs` (sorted) and `rows` (len(seqs), C: the manifest's `columns` in order, raw units)
    hold the stored ticks around those windows; every window must be complete in them.
    """
    w = manifest.window
    ends = np.asarray(list(ends), np.int64)
    if len(ends) == 0:
        return np.empty((0, w, len(manifest.features)), np.float32), np.zeros(0, bool)
    last = np.searchsorted(seqs, ends)
    if np.any(last >= len(seqs)) or np.any(seqs[np.minimum(last, len(seqs) - 1)] != ends):
        raise ValueError("a window end is not among the ticks given")
    first = last - (w - 1)
    if np.any(first < 0) or np.any(seqs[first] != ends - (w - 1)):
        raise ValueError("a window is not complete in the ticks given")
    x, far = normalise(rows, manifest)  # each tick once, then gathered into windows
    idx = first[:, None] + np.arange(w)[None, :]
    return x[idx], far[last]


class PendingWindows:
    """Complete windows waiting to be scored, per asset in seq order; taken in batches that
    round-robin across assets so one asset's long backlog does not starve the others."""

    def __init__(self) -> None:
        self._by_asset: OrderedDict[AssetKey, set[int]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, key: AssetKey, ends: Iterable[int]) -> int:
        seqs = self._by_asset.setdefault(key, set())
        before = len(seqs)
        seqs.update(int(s) for s in ends)
        added = len(seqs) - before
        self._count += added
        if not seqs:
            del self._by_asset[key]
        return added

    def discard(self, key: AssetKey) -> None:
        """Drop every window of one asset (another replica scores it now)."""
        self._count -= len(self._by_asset.pop(key, ()))

    def contains(self, key: AssetKey, seq: int) -> bool:
        return seq in self._by_asset.get(key, ())

    def take(self, limit: int, min_run: int = 1) -> dict[AssetKey, list[int]]:
        """Up to `limit` windows, lowest seqs first within each asset, at least `min_run` of
        an asset's at a time where it has them: consecutive windows share all but one tick,
        so a backlog is read from the store far more cheaply in runs than one window per
        asset."""
        taken: dict[AssetKey, list[int]] = {}
        if not self._count or limit <= 0:
            return taken
        keys = list(self._by_asset)
        share = max(1, min_run, limit // len(keys))
        left = limit
        while left > 0 and self._by_asset:
            for key in keys:
                seqs = self._by_asset.get(key)
                if not seqs:
                    continue
                chosen = heapq.nsmallest(min(share, left), seqs)
                seqs.difference_update(chosen)
                taken.setdefault(key, []).extend(chosen)
                left -= len(chosen)
                self._count -= len(chosen)
                if not seqs:
                    del self._by_asset[key]
                if left <= 0:
                    break
            keys = list(self._by_asset)
        for chosen_seqs in taken.values():
            chosen_seqs.sort()
        return taken


def disagreement(cloud: float, edge: float | None) -> float | None:
    """|cloud - edge| for the same window, None where the edge had no score."""
    if edge is None or edge != edge:
        return None
    return abs(float(cloud) - float(edge))
