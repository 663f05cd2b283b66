"""The durable uplink outbox: every accepted tick is committed here before it is sent, and
marked sent only once the broker has acknowledged the batch that carried it.

Acknowledged ticks stay for `replay_window` seconds and are sent again after every reconnect: a
broker that restarts can lose messages it had already acknowledged (seen with Mosquitto 2.0.11,
for messages in flight to a shared-subscription consumer). The cloud stores each
(gateway, asset, seq) once, so the copies cost bandwidth, never correctness.

SQLite in WAL mode, through the standard library's sqlite3: sqlite-utils would add ~25 MB of
resident memory (click, pluggy, ...) to a process that must stay under 100 MB. Sequence numbers
are per asset, start at 0, and survive restarts, so (gateway, asset, seq) is a durable key for
the cloud to deduplicate on; the MQTT message id restarts per connection and is never used so.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


SCHEMA = """
CREATE TABLE IF NOT EXISTS ticks (
    asset TEXT NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL, vals BLOB NOT NULL,
    prob REAL, rul REAL, model TEXT NOT NULL,
    shadow TEXT, sprob REAL, srul REAL,  -- a shadow model's version and scores, when one runs
    acked REAL,  -- when the broker acknowledged it; NULL while pending
    PRIMARY KEY (asset, seq));
CREATE INDEX IF NOT EXISTS ticks_acked ON ticks (acked) WHERE acked IS NOT NULL;
CREATE TABLE IF NOT EXISTS seqs (asset TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(slots=True)  # one per accepted tick: no per-instance dict
class OutboxTick:
    asset: str
    time: float
    values: np.ndarray
    probability: float = float("nan")
    rul: float = float("nan")
    model_version: str = ""
    seq: int = -1  # assigned by the outbox
    shadow_version: str | None = None
    shadow_probability: float = float("nan")
    shadow_rul: float = float("nan")


@dataclass
class PendingBatch:
    asset: str
    first_seq: int
    times: np.ndarray
    values: np.ndarray
    probability: np.ndarray
    rul: np.ndarray
    model_version: str
    shadow_version: str | None = None
    shadow_probability: np.ndarray | None = None
    shadow_rul: np.ndarray | None = None

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.times) - 1


class Outbox:
    def __init__(self, path: Path, max_bytes: int, features: int,
                 replay_window: float = 30.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process crash
        # Pending ticks are read back soon after they are written: a 512 KiB page cache serves
        # that as well as the 2 MiB default, and the agent's memory budget is tight.
        conn.execute("PRAGMA cache_size=-512")
        self.conn = conn
        self._lock = threading.Lock()
        self.max_bytes = max_bytes
        self.features = features
        self.replay_window = replay_window
        conn.executescript(SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(ticks)")}
        for name, kind in (("shadow", "TEXT"), ("sprob", "REAL"), ("srul", "REAL")):
            if name not in columns:  # an outbox written before shadow scoring existed
                conn.execute(f"ALTER TABLE ticks ADD COLUMN {name} {kind}")
        self._next = dict(conn.execute("SELECT asset, next_seq FROM seqs"))
        self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        self._appends_since_check = 0

    # --- writing -------------------------------------------------------------------------
    def next_seq(self, asset: str) -> int:
        return self._next.get(asset, 0)

    def append(self, ticks: list[OutboxTick]) -> int:
        """Give each tick its seq and commit them all in one transaction. Returns ticks dropped
        to stay within the disk budget (oldest first)."""
        if not ticks:
            return 0
        rows: list[tuple] = []
        touched: dict[str, int] = {}
        for t in ticks:
            t.seq = touched.get(t.asset, self._next.get(t.asset, 0))
            touched[t.asset] = t.seq + 1
            rows.append((t.asset, t.seq, t.time, np.asarray(t.values, "<f4").tobytes(),
                         t.probability, t.rul, t.model_version, t.shadow_version,
                         t.shadow_probability, t.shadow_rul))
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT INTO ticks (asset, seq, time, vals, prob, rul, model, "
                                 "shadow, sprob, srul) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 rows)
                conn.executemany("INSERT INTO seqs (asset, next_seq) VALUES (?, ?) ON CONFLICT"
                                 "(asset) DO UPDATE SET next_seq = excluded.next_seq",
                                 list(touched.items()))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._next.update(touched)
            self._appends_since_check += len(rows)
            if self._appends_since_check >= 1000:
                self._appends_since_check = 0
                return self._enforce_budget()
        return 0

    def used_bytes(self) -> int:
        conn = self.conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self._page_size

    def _enforce_budget(self) -> int:
        dropped = 0
        conn = self.conn
        if self.used_bytes() > self.max_bytes:  # delivered ticks kept for replay go first
            conn.execute("DELETE FROM ticks WHERE acked IS NOT NULL")
        while self.used_bytes() > self.max_bytes:
            count = conn.execute("SELECT count(*) FROM ticks").fetchone()[0]
            n = max(1, count // 10)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM ticks WHERE rowid IN "
                         "(SELECT rowid FROM ticks ORDER BY rowid LIMIT ?)", (n,))
            conn.execute("INSERT INTO counters (name, value) VALUES ('dropped', ?) ON CONFLICT"
                         "(name) DO UPDATE SET value = value + excluded.value", (n,))
            conn.execute("COMMIT")
            dropped += n
            if n >= count:
                break
        if dropped:
            log.warning("outbox over its %d byte budget: dropped the %d oldest ticks",
                        self.max_bytes, dropped)
        return dropped

    # --- sending -------------------------------------------------------------------------
    def pending_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.conn.execute(
                "SELECT asset, count(*) FROM ticks WHERE acked IS NULL GROUP BY asset"))

    def depth(self) -> int:
        with self._lock:
            return self.conn.execute(
                "SELECT count(*) FROM ticks WHERE acked IS NULL").fetchone()[0]

    def dropped(self) -> int:
        with self._lock:
            row = self.conn.execute("SELECT value FROM counters WHERE name='dropped'").fetchone()
        return row[0] if row else 0

    def take(self, asset: str, after_seq: int, max_ticks: int) -> PendingBatch | None:
        """The oldest run of consecutive ticks of `asset` with seq > after_seq, one model
        version (and one shadow version), at most max_ticks long."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT seq, time, vals, prob, rul, model, shadow, sprob, srul FROM ticks "
                "WHERE asset = ? AND seq > ? AND acked IS NULL "
                "ORDER BY seq LIMIT ?", (asset, after_seq, max_ticks)).fetchall()
        if not rows:
            return None
        first, model, shadow = rows[0][0], rows[0][5], rows[0][6]
        n = 0
        for i, r in enumerate(rows):
            if r[0] != first + i or r[5] != model or r[6] != shadow:
                break
            n = i + 1
        rows = rows[:n]

        def scores(col: int) -> np.ndarray:
            return np.array([np.nan if r[col] is None else r[col] for r in rows], np.float32)

        return PendingBatch(
            asset=asset, first_seq=first,
            times=np.array([r[1] for r in rows], np.float64),
            values=np.frombuffer(b"".join(r[2] for r in rows), "<f4").reshape(n, self.features),
            probability=scores(3), rul=scores(4), model_version=model, shadow_version=shadow,
            shadow_probability=scores(7) if shadow else None,
            shadow_rul=scores(8) if shadow else None)

    def ack(self, asset: str, first_seq: int, last_seq: int) -> None:
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            now = time.time()
            conn.execute("UPDATE ticks SET acked = ? WHERE asset = ? AND seq BETWEEN ? AND ?",
                         (now, asset, first_seq, last_seq))
            conn.execute("DELETE FROM ticks WHERE acked < ?", (now - self.replay_window,))
            conn.execute("COMMIT")

    def replay_recent(self) -> int:
        """Mark the ticks acknowledged within the replay window as pending again (after a
        reconnect). Returns how many will be sent again."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            n = conn.execute("UPDATE ticks SET acked = NULL WHERE acked >= ?",
                             (time.time() - self.replay_window,)).rowcount
            conn.execute("COMMIT")
        return n

    def close(self) -> None:
        with self._lock:
            self.conn.close()
