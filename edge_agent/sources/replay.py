"""Replay recorded data (C-MAPSS or CSV) as live readings at a set rate."""

from __future__ import annotations

import csv
import functools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from contract.cmapss import COLUMNS, read_cmapss
from edge_agent.readings import Reading
from edge_agent.sources import Emit, Reject


@functools.lru_cache(maxsize=4)
def unit_rows(path: Path) -> dict[int, np.ndarray]:
    """The rows of each unit, read once per file however many sources replay it."""
    data = read_cmapss(path).astype(np.float32)
    starts = np.flatnonzero(np.diff(data[:, 0], prepend=np.nan))
    return {int(block[0, 0]): block for block in np.split(data, starts[1:])}


def _unit_stream(rows: np.ndarray, start: int, loop: bool) -> Iterator[dict]:
    while True:
        for r in rows[start:]:
            yield dict(zip(COLUMNS, map(float, r), strict=True))
        if not loop:
            return
        start = 0


def cmapss_streams(path: Path, units: list[int] | str, prefix: str,
                   skip: Callable[[str], int], loop: bool = False) -> dict[str, Iterator[dict]]:
    """One iterator of rows (column name -> value) per unit, skipping `skip(asset)` rows that
    were already accepted before a restart; with `loop` each unit starts again from its first
    cycle when it ends (as if the engine were replaced), forever."""
    by_unit = unit_rows(Path(path))
    present = sorted(by_unit)
    chosen: list[int] = present if isinstance(units, str) else list(units)
    missing = sorted(set(chosen) - set(present))
    if missing:
        raise ValueError(f"{path}: no unit(s) {missing}; the file has units "
                         f"{present[0]}..{present[-1]}")
    streams: dict[str, Iterator[dict]] = {}
    for unit in chosen:
        asset = f"{prefix}{unit}"
        rows = by_unit[unit]
        done = skip(asset)
        streams[asset] = _unit_stream(rows, done % len(rows) if loop else done, loop)
    return streams


def csv_rows(path: Path, asset_column: str,
             time_column: str) -> Iterator[tuple[str, float | str, dict]]:
    """(asset, time, values) per CSV row; numbers parsed, anything else left for the checker.
    The time column stays among the values: where it counts operating time (C-MAPSS's `cycle`)
    a model may take it as a feature."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        for col in (asset_column, time_column):
            if col not in (reader.fieldnames or []):
                raise ValueError(f"{path}: no column {col!r} (columns: {reader.fieldnames})")
        for row in reader:
            asset = row.pop(asset_column)
            values: dict[str, float | str] = {}
            for k, v in row.items():
                try:
                    values[k] = float(v)
                except (TypeError, ValueError):
                    values[k] = v
            yield asset, values[time_column], values


class Replay(threading.Thread):
    """Emits one row of every stream per step, `rate` steps per second (0: no pause)."""

    def __init__(self, name: str, streams: dict[str, Iterator[dict]], rate: float, emit: Emit,
                 stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.streams, self.rate, self.emit, self.stop_event = streams, rate, emit, stop
        self.emitted = 0

    def run(self) -> None:
        live = dict(self.streams)
        start = time.monotonic()
        step = 0
        last_t = 0.0
        while live and not self.stop_event.is_set():
            for asset in list(live):
                row = next(live[asset], None)
                if row is None:
                    del live[asset]
                    continue
                now = time.time()
                last_t = now if now > last_t else last_t + 1e-6
                self.emit(Reading(asset, last_t, row, time.perf_counter(), {"cycle": row.get(
                    "cycle")}))
                self.emitted += 1
            step += 1
            if self.rate > 0:
                delay = start + step / self.rate - time.monotonic()
                if delay > 0:
                    self.stop_event.wait(delay)


class CsvReplay(threading.Thread):
    def __init__(self, path: Path, asset_column: str, time_column: str, rate: float, emit: Emit,
                 reject: Reject, stop: threading.Event) -> None:
        super().__init__(name=f"csv:{path.name}", daemon=True)
        self.rows = csv_rows(path, asset_column, time_column)
        self.rate, self.emit, self.reject, self.stop_event = rate, emit, reject, stop
        self.emitted = 0

    def run(self) -> None:
        start = time.monotonic()
        for i, (asset, t, values) in enumerate(self.rows):
            if self.stop_event.is_set():
                return
            self.emit(Reading(str(asset), t, values, time.perf_counter()))
            self.emitted += 1
            if self.rate > 0:
                delay = start + (i + 1) / self.rate - time.monotonic()
                if delay > 0:
                    self.stop_event.wait(delay)
