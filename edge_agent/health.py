"""How a link that keeps failing is reported: a broker, an uplink, a PLC, an OPC UA server.

A gateway whose broker is unreachable must say so where an operator looks, without filling the
disk: the first failure is logged at ERROR with the host and the reason, then one reminder per
`every` seconds while the outage lasts (with the count of failed attempts), and the recovery at
INFO with the outage's length. `Backoff` spaces out the retries of the links the agent redials
itself (paho and the AWS SDK redial on their own).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class OutageLog:
    """The state of one link, and the log lines its failures and recoveries deserve."""

    def __init__(self, log: logging.Logger, link: str, every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, down: str = "unreachable",
                 up: str = "reachable again") -> None:
        """`down`/`up` word the state: a broker is "unreachable", a PLC that answers with
        errors is better called "failing"."""
        self.log, self.link, self.every, self.clock = log, link, every, clock
        self.down_word, self.up_word = down, up
        self.up = False
        self.failures = 0  # failed attempts in the current outage
        self.last_reason: str | None = None
        self._since: float | None = None  # start of the current outage
        self._last_logged = 0.0
        self._lock = threading.Lock()

    def failed(self, reason: str) -> None:
        with self._lock:
            now = self.clock()
            self.up = False
            self.failures += 1
            self.last_reason = reason
            if self._since is None:
                self._since, self._last_logged = now, now
                self.log.error("%s %s: %s", self.link, self.down_word, reason)
            elif now - self._last_logged >= self.every:
                self._last_logged = now
                self.log.error("%s still %s after %.0f s (%d failed attempts): %s",
                               self.link, self.down_word, now - self._since, self.failures,
                               reason)

    def recovered(self) -> None:
        with self._lock:
            self.up = True
            if self._since is not None:
                self.log.info("%s %s after %.0f s (%d failed attempts)", self.link,
                              self.up_word, self.clock() - self._since, self.failures)
            self._since, self.failures = None, 0

    @property
    def down_for(self) -> float:
        """Seconds since the current outage began (0 while up or before any failure)."""
        since = self._since
        return 0.0 if since is None else self.clock() - since


class Backoff:
    """Retry delays that double from `first` up to `most`, and start over after a success."""

    def __init__(self, first: float = 0.5, most: float = 30.0) -> None:
        self.first, self.most = first, most
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.most, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first
