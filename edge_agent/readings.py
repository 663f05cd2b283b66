"""Sensor readings and the checks every reading passes before it becomes a tick (pure)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.errors import ContractError
from contract.payloads import TIME_MAX, TIME_MIN
from contract.topics import check_id

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _finite32(v: float) -> bool:
    """Finite once stored as float32 (1e39 is a finite float but an infinite tick value; an
    int past float range, which JSON allows, raises instead of answering)."""
    try:
        return math.isfinite(v) and abs(v) <= _FLOAT32_MAX
    except OverflowError:
        return False


def _show(v: object) -> str:
    """A value for a message, short: a sender controls its size."""
    try:
        text = repr(v)
    except ValueError:  # an int past Python's digit limit for str()
        return "a huge integer"
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class Reading:
    """One sensor sample of one asset, as a source delivers it."""

    asset: str
    time: Any  # as the source delivered it: ReadingChecker refuses all but a finite number
    values: Mapping[str, object]
    arrived: float = 0.0  # time.perf_counter() at arrival, for the tick-to-alert latency
    meta: dict = field(default_factory=dict)


class Rejected(ValueError):
    """A reading that cannot become a tick. `reason` is a short label for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class ReadingChecker:
    """Turns readings into feature vectors in manifest order, refusing bad ones."""

    def __init__(self, features: list[str]) -> None:
        self.features = list(features)
        self.last_time: dict[str, float] = {}

    def check(self, reading: Reading) -> np.ndarray:
        try:
            check_id(reading.asset, "asset")
        except ContractError as exc:
            raise Rejected("bad_asset", str(exc)) from None
        t = reading.time
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not _finite32(t):
            raise Rejected("bad_time", f"asset {reading.asset}: time {_show(t)} is not a finite "
                                       "number")
        if not TIME_MIN <= t <= TIME_MAX:
            raise Rejected("bad_time", f"asset {reading.asset}: time {_show(t)} is outside the "
                                       f"plausible range [{TIME_MIN:.0f}, {TIME_MAX:.0f}] "
                                       "(epoch seconds)")
        row = np.empty(len(self.features), np.float32)
        for i, name in enumerate(self.features):
            if name not in reading.values:
                raise Rejected("missing_feature", f"asset {reading.asset}: missing feature {name}")
            v = reading.values[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise Rejected("not_a_number", f"asset {reading.asset}: feature {name} is not "
                                               f"a number ({_show(v)})")
            if not _finite32(v):
                raise Rejected("not_finite", f"asset {reading.asset}: feature {name} is "
                                             f"{_show(v)} (not a finite float32)")
            row[i] = v
        last = self.last_time.get(reading.asset)
        if last is not None and t <= last:
            raise Rejected("time_backwards",
                           f"asset {reading.asset}: time {t} is not after the previous {last}")
        self.last_time[reading.asset] = t
        return row
