"""Sensor readings and the checks every reading passes before it becomes a tick (pure)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from contract.errors import ContractError
from contract.topics import check_id


@dataclass
class Reading:
    """One sensor sample of one asset, as a source delivers it."""

    asset: str
    time: float
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
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise Rejected("bad_time", f"asset {reading.asset}: time {t!r} is not a finite number")
        row = np.empty(len(self.features), np.float32)
        for i, name in enumerate(self.features):
            if name not in reading.values:
                raise Rejected("missing_feature", f"asset {reading.asset}: missing feature {name}")
            v = reading.values[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise Rejected("not_a_number",
                               f"asset {reading.asset}: feature {name} is not a number ({v!r})")
            if not math.isfinite(v):
                raise Rejected("not_finite", f"asset {reading.asset}: feature {name} is {v}")
            row[i] = v
        last = self.last_time.get(reading.asset)
        if last is not None and t <= last:
            raise Rejected("time_backwards",
                           f"asset {reading.asset}: time {t} is not after the previous {last}")
        self.last_time[reading.asset] = t
        return row
