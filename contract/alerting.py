"""The alert state machine, shared by edge and cloud so both judge a score the same way.

NORMAL -> WARNING -> CRITICAL on the failure probability (and optionally on RUL), with separate
enter and leave thresholds (hysteresis) and a dwell: a new state is taken only after the scores
have asked for it `dwell` times in a row, so a noisy score cannot make the state flap.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.manifest import Thresholds
from contract.payloads import AlertState

NORMAL, WARNING, CRITICAL = AlertState.NORMAL, AlertState.WARNING, AlertState.CRITICAL


def target_state(current: AlertState, probability: float, rul: float | None,
                 t: Thresholds) -> AlertState:
    """The state the score asks for, given the current one (pure; no dwell)."""
    critical = probability >= (t.critical_leave if current is CRITICAL else t.critical_enter)
    warning = probability >= (t.warning_leave if current.level >= 1 else t.warning_enter)
    if rul is not None:
        if t.rul_critical is not None:
            critical = critical or rul <= t.rul_critical
        if t.rul_warning is not None:
            warning = warning or rul <= t.rul_warning
    if critical:
        return CRITICAL
    return WARNING if warning else NORMAL


@dataclass(frozen=True)
class Transition:
    old: AlertState
    new: AlertState


@dataclass(frozen=True)
class MachineState:
    """An alert machine's state including its dwell progress, as stored between replicas."""

    state: AlertState
    pending: AlertState | None = None
    count: int = 0


class AlertMachine:
    """One asset's alert state. Feed it every score; it returns a Transition when it changes."""

    def __init__(self, thresholds: Thresholds, state: AlertState = NORMAL) -> None:
        self.thresholds = thresholds
        self.state = state
        self._pending: AlertState | None = None
        self._count = 0

    def update(self, probability: float, rul: float | None = None) -> Transition | None:
        wanted = target_state(self.state, probability, rul, self.thresholds)
        if wanted is self.state:
            self._pending, self._count = None, 0
            return None
        if wanted is self._pending:
            self._count += 1
        else:
            self._pending, self._count = wanted, 1
        if self._count < self.thresholds.dwell:
            return None
        old, self.state = self.state, wanted
        self._pending, self._count = None, 0
        return Transition(old, wanted)

    def snapshot(self) -> MachineState:
        """Everything needed to continue elsewhere exactly as this machine would."""
        return MachineState(self.state, self._pending, self._count)

    @classmethod
    def restore(cls, thresholds: Thresholds, saved: MachineState) -> AlertMachine:
        machine = cls(thresholds, saved.state)
        if saved.pending is not None and saved.pending is not saved.state and saved.count > 0:
            machine._pending, machine._count = saved.pending, saved.count
        return machine
