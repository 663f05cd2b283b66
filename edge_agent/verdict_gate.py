"""Adopting the cloud's verdict (pure): per asset, scored windows wait behind an escalated one
until the cloud's verdict on it arrives or its deadline passes, so the alert state machine still
sees every window once and in order."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class CloudScore:
    probability: float
    rul: float | None


@dataclass
class Released(Generic[T]):
    item: T
    cloud: CloudScore | None  # the verdict to decide on; None: the edge's own score


@dataclass
class _Held(Generic[T]):
    seq: int
    item: T
    escalated: bool
    deadline: float
    cloud: CloudScore | None = None


class VerdictGate(Generic[T]):
    def __init__(self, deadline: float, clock=time.monotonic) -> None:
        self.deadline = deadline
        self.clock = clock
        self._held: dict[str, deque[_Held[T]]] = {}

    def offer(self, asset: str, seq: int, item: T, escalated: bool) -> list[Released[T]]:
        """A newly scored window; returns the windows now ready, oldest first."""
        queue = self._held.setdefault(asset, deque())
        if not queue and not escalated:
            return [Released(item, None)]
        queue.append(_Held(seq, item, escalated, self.clock() + self.deadline))
        return self._release(asset)

    def verdict(self, asset: str, seq: int, score: CloudScore) -> list[Released[T]]:
        """The cloud's verdict on the escalated window ending at `seq`; a verdict for a window
        no longer held (late, or never escalated here) releases nothing."""
        for held in self._held.get(asset, ()):
            if held.escalated and held.seq == seq:
                held.cloud = score
                return self._release(asset)
        return []

    def expire(self) -> list[Released[T]]:
        """Windows whose verdict is overdue go ahead on the edge's own score."""
        out: list[Released[T]] = []
        for asset in list(self._held):
            out += self._release(asset)
        return out

    def flush(self) -> list[Released[T]]:
        """Everything held, on the edge's own scores where no verdict came (at shutdown)."""
        out = [Released(h.item, h.cloud) for queue in self._held.values() for h in queue]
        self._held.clear()
        return out

    def _release(self, asset: str) -> list[Released[T]]:
        queue, now, out = self._held[asset], self.clock(), []
        while queue:
            head = queue[0]
            if head.escalated and head.cloud is None and now < head.deadline:
                break
            queue.popleft()
            out.append(Released(head.item, head.cloud))
        if not queue:
            del self._held[asset]
        return out

    def __len__(self) -> int:
        return sum(len(q) for q in self._held.values())
