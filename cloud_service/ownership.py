"""Which replica scores which asset, and in what order its windows are fed.

Ticks of one asset reach any replica (the uplink subscription is shared), but its windows must
be scored by exactly one replica at a time, the one that holds its alert machine. Each replica
keeps a lease in the store, renewed by heartbeat, and every asset row names its owner. A replica
claims assets that have no owner or whose owner's lease has expired, up to a fair share of the
fleet, and gives up what it holds beyond that share so a replica that joins gets work. Scores
are written only while the asset row still names the writer as its owner, checked in the same
transaction (a fencing check), so a replica that lost an asset, even one that has not noticed
yet, can neither store nor publish a second verdict on its windows.

An alert machine is only meaningful if it sees an asset's windows in seq order. Batches of one
asset may be committed out of order by different replicas, so windows are fed from a frontier
(`next_end`) that advances only through complete windows; a hole (a tick not stored yet) holds
the asset back until it fills, or until `gap_wait` seconds have passed (a tick the gateway lost
for good), when the frontier jumps over it. A window completed behind the frontier is still
scored and stored, but cannot move the alert state back in time.

The rules here are pure; the SQL lives in the store backends and the loop in the scorer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from contract.alerting import MachineState

AssetKey = tuple[str, str]


class OwnershipError(RuntimeError):
    """The replica cannot take part in ownership (for example another live replica uses its
    id)."""


@dataclass(frozen=True)
class Membership:
    """What a heartbeat learned: how many replicas are live, how many assets there are, how
    many this replica owns, and whether it holds the leader lease."""

    live_replicas: int
    assets: int
    owned: int
    leader: bool


@dataclass(frozen=True)
class OwnedAsset:
    """An asset this replica owns, with what is needed to continue scoring it."""

    key: AssetKey
    ticks: int
    last_seq: int | None
    scored_seq: int | None  # the last window fed to the alert machine
    machine: MachineState
    state_since: float | None


def fair_share(assets: int, replicas: int) -> int:
    """Assets each live replica should own (rounded up, so the shares cover the fleet)."""
    return math.ceil(assets / max(1, replicas))


def rebalance(m: Membership) -> tuple[int, int]:
    """(assets to claim, assets to release) for a replica after a heartbeat."""
    share = fair_share(m.assets, m.live_replicas)
    return max(0, share - m.owned), max(0, m.owned - share)


def first_window_end(window: int) -> int:
    """Seqs start at 0 per asset, so its first complete window ends at W - 1."""
    return window - 1


def next_window_end(scored_seq: int | None, window: int) -> int:
    return first_window_end(window) if scored_seq is None else scored_seq + 1


@dataclass(frozen=True)
class Advance:
    """Windows to queue for one asset, in order, and where the frontier now stands."""

    ready: list[int]
    next_end: int
    blocked_by_hole: bool  # a complete window lies beyond a window that is not complete yet


def advance(next_end: int, complete_ends: np.ndarray, done: Iterable[int]) -> Advance:
    """Walk the frontier through consecutive complete window ends, queuing those not done.

    `complete_ends` are sorted; `done` are ends already scored (by an earlier owner, say),
    which the frontier passes without queuing them again.
    """
    done = set(done)
    ready: list[int] = []
    i = int(np.searchsorted(complete_ends, next_end))
    while i < len(complete_ends) and int(complete_ends[i]) == next_end:
        if next_end not in done:
            ready.append(next_end)
        next_end += 1
        i += 1
    return Advance(ready, next_end, i < len(complete_ends))


def skip_hole(complete_ends: np.ndarray, next_end: int) -> int:
    """The frontier after giving up on the hole at `next_end`: the next complete window."""
    i = int(np.searchsorted(complete_ends, next_end))
    return int(complete_ends[i]) if i < len(complete_ends) else next_end
