"""Which windows the edge is unsure about (pure): they go to the cloud at once, ahead of the
normal batch, for the full model's verdict."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from contract.manifest import Manifest


def escalation_reason(probability: float, rul: float, manifest: Manifest, band: float,
                      check_heads: bool = True) -> str | None:
    """'near-threshold' when the probability lies within `band` of the decision threshold;
    'heads-disagree' when the failure head and the RUL head (a free second opinion from the
    same call) disagree about failure within the horizon; else None."""
    decision = manifest.thresholds.decision
    if band > 0 and abs(probability - decision) <= band:
        return "near-threshold"
    if check_heads and (probability >= decision) != (rul <= manifest.horizon):
        return "heads-disagree"
    return None


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "agreed", "overruled" or "late"
    latency: float


class VerdictLedger:
    """Escalations waiting for the cloud's verdict, and how each ended. Bounded: the oldest
    entries go first when the cloud does not answer at all."""

    def __init__(self, deadline: float, max_pending: int = 10_000,
                 clock=time.monotonic) -> None:
        self.deadline = deadline
        self.max_pending = max_pending
        self.clock = clock
        self._pending: OrderedDict[tuple[str, int], tuple[float, bool]] = OrderedDict()
        self._lock = threading.Lock()  # sent by the scoring loop, answered on paho's thread

    def sent(self, asset: str, seq: int, edge_decision: bool) -> None:
        with self._lock:
            self._pending[(asset, seq)] = (self.clock(), edge_decision)
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)

    def received(self, asset: str, seq: int, cloud_decision: bool) -> Verdict | None:
        """How the verdict for (asset, seq) compares; None for a window not escalated here
        (or answered already)."""
        with self._lock:
            entry = self._pending.pop((asset, seq), None)
        if entry is None:
            return None
        latency = self.clock() - entry[0]
        if latency > self.deadline:
            return Verdict("late", latency)
        return Verdict("agreed" if cloud_decision == entry[1] else "overruled", latency)

    def __len__(self) -> int:
        return len(self._pending)
