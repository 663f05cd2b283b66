"""The SQLite backend: one file in WAL mode, for one host (the embedded default).

Threads: the MQTT writer, the scorer and the HTTP worker threads all use the store. Each thread
gets its own connection; writes take SQLite's write lock at BEGIN IMMEDIATE and wait for it
(busy timeout) instead of failing. Ticks and predictions are keyed by (gateway, asset, seq)
and written with INSERT OR IGNORE, so a redelivered batch changes nothing.

Schema: `MIGRATIONS[i]` takes a database from version i to i + 1; the version is kept in
`schema_version`. A file made before that table existed starts at 0: the first migration is
the schema that code wrote, with "if not exists" throughout, so it adds only what is missing.
Retention deletes old rows in small batches, so writers wait little.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, cast

import numpy as np
from sqlite_utils import Database

from cloud_service.deadletters import DeadLetter
from cloud_service.ownership import Membership, OwnershipError
from cloud_service.store.base import (
    ModelConflict,
    StoreError,
    StoreUnavailable,
    check_schema_version,
)
from cloud_service.store.reads import SharedReads
from cloud_service.store.rows import (
    AssetKey,
    ClaimedDelivery,
    DriftCheck,
    DriftEventRow,
    Inserted,
    ModelRow,
    Received,
    ReportUpdate,
    RolloutRow,
    ScoresStored,
    ScoreWrite,
    ShadowRow,
    StatusUpdate,
    TargetRequest,
    WebhookDelivery,
    WindowTicks,
    without_assets,
    written_assets,
)

BUSY_TIMEOUT_MS = 30_000
RETENTION_BATCH = 5_000  # rows per delete transaction

# The schema as the first SQLite store wrote it (sqlite-utils), then each change after it.
MIGRATIONS: list[str] = [
    """
CREATE TABLE IF NOT EXISTS "alerts" (
   "id" INTEGER PRIMARY KEY,
   "gateway" TEXT,
   "asset" TEXT,
   "seq" INTEGER,
   "source" TEXT,
   "old_state" TEXT,
   "new_state" TEXT,
   "probability" REAL,
   "rul" REAL,
   "model_version" TEXT,
   "tick_time" REAL,
   "published_at" REAL
);
CREATE TABLE IF NOT EXISTS "assets" (
   "gateway" TEXT,
   "asset" TEXT,
   "first_seen" REAL,
   "last_seen" REAL,
   "last_seq" INTEGER,
   "ticks" INTEGER NOT NULL DEFAULT 0,
   "edge_seq" INTEGER,
   "edge_probability" REAL,
   "edge_rul" REAL,
   "edge_model_version" TEXT,
   "cloud_seq" INTEGER,
   "cloud_probability" REAL,
   "cloud_rul" REAL,
   "cloud_state" TEXT,
   "cloud_state_since" REAL,
   "cloud_model_version" TEXT,
   "scored_at" REAL,
   PRIMARY KEY ("gateway", "asset")
);
CREATE TABLE IF NOT EXISTS "dead_letters" (
   "id" INTEGER PRIMARY KEY,
   "received_at" REAL,
   "topic" TEXT,
   "gateway" TEXT,
   "reason" TEXT,
   "detail" TEXT,
   "size" INTEGER,
   "payload" BLOB
);
CREATE TABLE IF NOT EXISTS "feature_sets" (
   "id" INTEGER PRIMARY KEY,
   "names" TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS "gateways" (
   "gateway" TEXT PRIMARY KEY,
   "online" INTEGER,
   "status_time" REAL,
   "first_seen" REAL,
   "last_seen" REAL,
   "model_version" TEXT,
   "agent_version" TEXT
);
CREATE TABLE IF NOT EXISTS "health" (
   "id" INTEGER PRIMARY KEY,
   "checked_at" REAL
);
CREATE TABLE IF NOT EXISTS "models" (
   "version" TEXT PRIMARY KEY,
   "created" TEXT,
   "registered_at" REAL,
   "source" TEXT,
   "sha256" TEXT,
   "size" INTEGER,
   "signature" TEXT,
   "path" TEXT,
   "tar_path" TEXT,
   "window" INTEGER,
   "features" TEXT,
   "manifest" TEXT
);
CREATE TABLE IF NOT EXISTS "predictions" (
   "gateway" TEXT,
   "asset" TEXT,
   "seq" INTEGER,
   "tick_time" REAL,
   "probability" REAL,
   "rul" REAL,
   "edge_probability" REAL,
   "edge_rul" REAL,
   "diff" REAL,
   "rul_diff" REAL,
   "model_version" TEXT,
   "edge_model_version" TEXT,
   "scored_at" REAL,
   "error" TEXT,
   PRIMARY KEY ("gateway", "asset", "seq")
);
CREATE TABLE IF NOT EXISTS "rollout_targets" (
   "rollout_id" TEXT REFERENCES "rollouts"("id"),
   "gateway" TEXT,
   "from_version" TEXT,
   "step" TEXT,
   "reason" TEXT,
   "updated_at" REAL,
   "report_time" REAL,
   PRIMARY KEY ("rollout_id", "gateway")
);
CREATE TABLE IF NOT EXISTS "rollouts" (
   "id" TEXT PRIMARY KEY,
   "version" TEXT,
   "action" TEXT,
   "state" TEXT,
   "created_at" REAL,
   "updated_at" REAL,
   "percent" REAL,
   "requested" TEXT
);
CREATE TABLE IF NOT EXISTS "shadow_scores" (
   "gateway" TEXT,
   "asset" TEXT,
   "seq" INTEGER,
   "model_version" TEXT,
   "probability" REAL,
   "rul" REAL,
   PRIMARY KEY ("gateway", "asset", "seq", "model_version")
);
CREATE TABLE IF NOT EXISTS "ticks" (
   "gateway" TEXT,
   "asset" TEXT,
   "seq" INTEGER,
   "time" REAL NOT NULL,
   "feature_set" INTEGER NOT NULL,
   "vals" BLOB NOT NULL,
   "edge_probability" REAL,
   "edge_rul" REAL,
   "model_version" TEXT,
   "received_at" REAL,
   PRIMARY KEY ("gateway", "asset", "seq")
);
CREATE UNIQUE INDEX IF NOT EXISTS "idx_feature_sets_names"
    ON "feature_sets" ("names");
CREATE INDEX IF NOT EXISTS "idx_ticks_gateway_asset_time"
    ON "ticks" ("gateway", "asset", "time");
CREATE INDEX IF NOT EXISTS "idx_shadow_scores_model_version"
    ON "shadow_scores" ("model_version");
CREATE INDEX IF NOT EXISTS "idx_alerts_published_at"
    ON "alerts" ("published_at");
CREATE UNIQUE INDEX IF NOT EXISTS "idx_alerts_gateway_asset_seq_source"
    ON "alerts" ("gateway", "asset", "seq", "source");
CREATE INDEX IF NOT EXISTS "idx_dead_letters_reason"
    ON "dead_letters" ("reason");
    """,
    # 2: retention deletes by tick time.
    """
CREATE INDEX IF NOT EXISTS "idx_ticks_time" ON "ticks" ("time");
CREATE INDEX IF NOT EXISTS "idx_predictions_tick_time" ON "predictions" ("tick_time");
    """,
    # 3: ownership across replicas: leases, each asset's owner and its alert machine's dwell,
    # and which replica scored each window.
    """
CREATE TABLE IF NOT EXISTS "replicas" (
   "replica" TEXT PRIMARY KEY,
   "token" TEXT NOT NULL,
   "started_at" REAL,
   "heartbeat_at" REAL,
   "expires_at" REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS "leader" (
   "id" INTEGER PRIMARY KEY,
   "holder" TEXT NOT NULL,
   "expires_at" REAL NOT NULL
);
ALTER TABLE "assets" ADD COLUMN "owner" TEXT;
ALTER TABLE "assets" ADD COLUMN "cloud_pending" TEXT;
ALTER TABLE "assets" ADD COLUMN "cloud_pending_count" INTEGER;
ALTER TABLE "predictions" ADD COLUMN "scored_by" TEXT;
CREATE INDEX IF NOT EXISTS "idx_assets_owner_last_seen" ON "assets" ("owner", "last_seen");
    """,
    # 4: an operator acknowledges an alert: who, when, and a note.
    """
ALTER TABLE "alerts" ADD COLUMN "acknowledged_by" TEXT;
ALTER TABLE "alerts" ADD COLUMN "acknowledged_at" REAL;
ALTER TABLE "alerts" ADD COLUMN "ack_note" TEXT;
    """,
    # 5: input drift: each asset's latest check, and the events when it crossed the threshold.
    """
CREATE TABLE IF NOT EXISTS "asset_drift" (
   "gateway" TEXT,
   "asset" TEXT,
   "state" TEXT NOT NULL,
   "score" REAL,
   "ticks" INTEGER NOT NULL,
   "last_seq" INTEGER,
   "checked_at" REAL NOT NULL,
   "model_version" TEXT,
   "detail" TEXT NOT NULL,
   PRIMARY KEY ("gateway", "asset")
);
CREATE TABLE IF NOT EXISTS "drift_events" (
   "id" INTEGER PRIMARY KEY,
   "gateway" TEXT NOT NULL,
   "asset" TEXT NOT NULL,
   "kind" TEXT NOT NULL,
   "score" REAL,
   "features" TEXT NOT NULL,
   "model_version" TEXT,
   "at" REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS "idx_drift_events_asset" ON "drift_events" ("gateway", "asset");
    """,
    # 6: the webhook delivery queue: one row per alert and webhook, claimed by one replica at
    # a time, kept (delivered or failed) as the record of what was sent.
    """
CREATE TABLE IF NOT EXISTS "webhook_deliveries" (
   "id" INTEGER PRIMARY KEY,
   "delivery_id" TEXT NOT NULL UNIQUE,
   "webhook" TEXT NOT NULL,
   "gateway" TEXT NOT NULL,
   "asset" TEXT NOT NULL,
   "event" TEXT NOT NULL,
   "created_at" REAL NOT NULL,
   "status" TEXT NOT NULL DEFAULT 'pending',
   "attempts" INTEGER NOT NULL DEFAULT 0,
   "next_attempt_at" REAL NOT NULL,
   "claimed_by" TEXT,
   "claimed_until" REAL,
   "finished_at" REAL,
   "last_error" TEXT
);
CREATE INDEX IF NOT EXISTS "idx_webhook_deliveries_due"
    ON "webhook_deliveries" ("status", "next_attempt_at");
    """,
]


def _opt(x: float | None) -> float | None:
    """NaN (the codec's 'no score') and None both become SQL NULL."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


class SqliteStore(SharedReads):
    MARK = "?"

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.where = f"SQLite file {self.path}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of {self.where}: {exc}") from None
        self.synchronous = synchronous
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._feature_ids: dict[tuple[str, ...], int] = {}
        self._feature_names: dict[int, tuple[str, ...]] = {}
        try:
            self._migrate()
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"cannot open {self.where}: {exc}") from None
        except StoreError:
            self.close()
            raise

    # -- connections -----------------------------------------------------------------------

    def _db(self) -> Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                   isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            db = Database(conn, execute_plugins=False)
            self._local.db = db
            with self._lock:
                self._all.append(conn)
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the write lock is taken at its start, so two writers queue
        instead of deadlocking on a lock upgrade."""
        conn = self._db().conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:  # locked too long, disk full, I/O error
            raise StoreUnavailable(f"{self.where}: {exc}") from exc

    def _rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict]:
        return list(self._db().query(sql, params))

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    # -- schema ----------------------------------------------------------------------------

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "schema_version" in tables:
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            return int(row[0] or 0)
        # A new file, or one from before versioning: the first migration only creates what
        # is missing, so it also completes a file made before some of today's tables.
        return 0

    def _migrate(self) -> None:
        """Bring the file to the latest schema, one transaction per step (several processes
        may open it at once: the write lock orders them, and each re-reads the version)."""
        db = self._db()
        db.enable_wal()
        conn = db.conn
        latest = len(MIGRATIONS)
        while True:
            with self._write():
                current = self._version(conn)
                steps = check_schema_version(current, latest, self.where)
                if not steps:
                    return
                step = steps[0]
                # executescript would commit our transaction: run the statements one by one
                for statement in _statements(MIGRATIONS[step - 1]):
                    conn.execute(statement)
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version "
                             "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
                conn.execute("INSERT INTO schema_version VALUES (?, ?)", (step, time.time()))

    def schema_version(self) -> int:
        return self._version(self._db().conn)

    # -- ingest ----------------------------------------------------------------------------

    def _feature_set_id(self, conn: sqlite3.Connection, names: tuple[str, ...]) -> int:
        known = self._feature_ids.get(names)
        if known is not None:
            return known
        text = json.dumps(list(names))
        conn.execute("INSERT OR IGNORE INTO feature_sets (names) VALUES (?)", (text,))
        (fid,) = conn.execute("SELECT id FROM feature_sets WHERE names = ?", (text,)).fetchone()
        with self._lock:
            self._feature_ids[names] = fid
            self._feature_names[fid] = names
        return fid

    def write_ingest(self, batches: list[Received], statuses: list[StatusUpdate],
                     dead: list[DeadLetter],
                     reports: Sequence[ReportUpdate] = ()) -> list[Inserted]:
        """Everything one group of MQTT messages carried, in one transaction."""
        inserted: list[Inserted] = []
        if not (batches or statuses or dead or reports):
            return inserted
        with self._write() as conn:
            for item in batches:
                inserted.append(self._insert_batch(conn, item))
            for s in statuses:
                st = s.status
                conn.execute(
                    "INSERT INTO gateways (gateway, online, status_time, first_seen, last_seen, "
                    "model_version, agent_version) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (gateway) DO UPDATE SET "
                    "online = CASE WHEN excluded.status_time >= coalesce(status_time, 0) "
                    "  THEN excluded.online ELSE online END, "
                    "model_version = CASE WHEN excluded.status_time >= coalesce(status_time, 0) "
                    "  THEN coalesce(excluded.model_version, model_version) "
                    "  ELSE model_version END, "
                    "agent_version = CASE WHEN excluded.status_time >= coalesce(status_time, 0) "
                    "  THEN coalesce(excluded.agent_version, agent_version) "
                    "  ELSE agent_version END, "
                    "status_time = max(coalesce(status_time, 0), excluded.status_time), "
                    "last_seen = max(coalesce(last_seen, 0), excluded.last_seen)",
                    (st.gateway, int(st.online), st.time, s.received_at, s.received_at,
                     st.model_version, st.agent_version))
            for r in reports:
                self._apply_report(conn, r)
            if dead:
                conn.executemany(
                    "INSERT INTO dead_letters (received_at, topic, gateway, reason, detail, size, "
                    "payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(d.received_at, d.topic, d.gateway, d.reason, d.detail, d.size, d.payload)
                     for d in dead])
        return inserted

    @staticmethod
    def _apply_report(conn: sqlite3.Connection, item: ReportUpdate) -> None:
        r = item.report
        if r.rollout_id:  # an older report (redelivered, reordered) never overwrites a newer
            conn.execute(
                "UPDATE rollout_targets SET step = ?, reason = ?, updated_at = ?, "
                "report_time = ? WHERE rollout_id = ? AND gateway = ? "
                "AND coalesce(report_time, 0) <= ?",
                (r.step, r.reason, item.received_at, r.time, r.rollout_id, r.gateway, r.time))
        if r.step in ("active", "rolled-back"):
            conn.execute(
                "INSERT INTO gateways (gateway, first_seen, last_seen, model_version) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (gateway) DO UPDATE SET "
                "model_version = excluded.model_version, last_seen = excluded.last_seen",
                (r.gateway, item.received_at, item.received_at, r.version))

    def _insert_batch(self, conn: sqlite3.Connection, item: Received) -> Inserted:
        b, now = item.batch, item.received_at
        fid = self._feature_set_id(conn, tuple(b.features))
        values = np.ascontiguousarray(b.values, dtype="<f4")
        rows = [
            (b.gateway, b.asset, seq, float(b.timestamps[i]), fid, values[i].tobytes(),
             _opt(b.probability[i]), _opt(b.rul[i]), b.model_version, now)
            for i, seq in enumerate(b.seqs)
        ]
        before = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO ticks (gateway, asset, seq, time, feature_set, vals, "
            "edge_probability, edge_rul, model_version, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        new_rows = conn.total_changes - before
        shadow_p, shadow_r = b.shadow_probability, b.shadow_rul
        if b.shadow_version is not None and shadow_p is not None:
            conn.executemany(
                "INSERT OR IGNORE INTO shadow_scores (gateway, asset, seq, model_version, "
                "probability, rul) VALUES (?, ?, ?, ?, ?, ?)",
                [(b.gateway, b.asset, seq, b.shadow_version, float(shadow_p[i]),
                  _opt(shadow_r[i]) if shadow_r is not None else None)
                 for i, seq in enumerate(b.seqs) if math.isfinite(shadow_p[i])])
        edge_seq = edge_p = edge_r = None
        for i in range(len(rows) - 1, -1, -1):
            if rows[i][6] is not None:
                edge_seq, edge_p, edge_r = rows[i][2], rows[i][6], rows[i][7]
                break
        last = b.first_seq + len(rows) - 1
        conn.execute(
            "INSERT INTO assets (gateway, asset, first_seen, last_seen, last_seq, ticks, "
            "edge_seq, edge_probability, edge_rul, edge_model_version) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway, asset) DO UPDATE SET "
            "last_seen = max(coalesce(last_seen, 0), excluded.last_seen), "
            "last_seq = max(coalesce(last_seq, -1), excluded.last_seq), "
            "ticks = ticks + excluded.ticks, "
            "edge_probability = CASE WHEN coalesce(excluded.edge_seq, -1) >= "
            "  coalesce(edge_seq, -1) THEN excluded.edge_probability ELSE edge_probability END, "
            "edge_rul = CASE WHEN coalesce(excluded.edge_seq, -1) >= coalesce(edge_seq, -1) "
            "  THEN excluded.edge_rul ELSE edge_rul END, "
            "edge_model_version = CASE WHEN coalesce(excluded.edge_seq, -1) >= "
            "  coalesce(edge_seq, -1) THEN excluded.edge_model_version "
            "  ELSE edge_model_version END, "
            "edge_seq = max(coalesce(edge_seq, -1), coalesce(excluded.edge_seq, -1))",
            (b.gateway, b.asset, now, now, last, new_rows, edge_seq, edge_p, edge_r,
             b.model_version))
        conn.execute(
            "INSERT INTO gateways (gateway, first_seen, last_seen) VALUES (?, ?, ?) "
            "ON CONFLICT (gateway) DO UPDATE SET "
            "last_seen = max(coalesce(last_seen, 0), excluded.last_seen)",
            (b.gateway, now, now))
        return Inserted((b.gateway, b.asset), b.first_seq, last, new_rows, b.escalated)

    # -- scoring ---------------------------------------------------------------------------

    def tick_seqs(self, key: AssetKey, lo: int, hi: int) -> np.ndarray:
        cur = self._db().conn.execute(
            "SELECT seq FROM ticks WHERE gateway = ? AND asset = ? AND seq BETWEEN ? AND ? "
            "ORDER BY seq", (*key, lo, hi))
        return np.fromiter((r[0] for r in cur), np.int64)

    def predicted_seqs(self, key: AssetKey, lo: int, hi: int) -> set[int]:
        cur = self._db().conn.execute(
            "SELECT seq FROM predictions WHERE gateway = ? AND asset = ? AND seq BETWEEN ? AND ?",
            (*key, lo, hi))
        return {r[0] for r in cur}

    def windows_ticks(self, ranges: Sequence[tuple[AssetKey, int, int]]
                      ) -> dict[AssetKey, WindowTicks]:
        """The ticks of many assets' seq ranges (in-process reads: one query each is cheap)."""
        return {key: self.window_ticks(key, lo, hi) for key, lo, hi in ranges}

    def window_ticks(self, key: AssetKey, lo: int, hi: int) -> WindowTicks:
        rows = self._db().conn.execute(
            "SELECT seq, time, received_at, feature_set, vals, edge_probability, edge_rul, "
            "model_version FROM ticks WHERE gateway = ? AND asset = ? AND seq BETWEEN ? AND ? "
            "ORDER BY seq", (*key, lo, hi)).fetchall()
        return WindowTicks(
            seqs=np.array([r[0] for r in rows], np.int64),
            times=np.array([r[1] for r in rows], np.float64),
            received_at=np.array([r[2] if r[2] is not None else r[1] for r in rows], np.float64),
            feature_sets=np.array([r[3] for r in rows], np.int64),
            values=[r[4] for r in rows],
            edge_probability=[r[5] for r in rows],
            edge_rul=[r[6] for r in rows],
            edge_model=[r[7] for r in rows],
        )

    def feature_set(self, feature_set_id: int) -> tuple[str, ...]:
        known = self._feature_names.get(feature_set_id)
        if known is not None:
            return known
        row = self._db().conn.execute("SELECT names FROM feature_sets WHERE id = ?",
                                      (feature_set_id,)).fetchone()
        if row is None:
            raise KeyError(f"feature set {feature_set_id} is not stored")
        names = tuple(json.loads(row[0]))
        with self._lock:
            self._feature_names[feature_set_id] = names
            self._feature_ids[names] = feature_set_id
        return names

    def write_scores(self, write: ScoreWrite, owner: str | None = None) -> ScoresStored:
        """Store one batch of scores. With `owner`, only the assets whose row still names that
        replica as owner are written (checked inside the transaction); the others are returned,
        so the caller drops them and publishes nothing for them."""
        with self._write() as conn:
            refused: set[AssetKey] = set()
            if owner is not None:
                keys = written_assets(write)
                for key in keys:
                    row = conn.execute("SELECT owner FROM assets WHERE gateway = ? AND asset = ?",
                                       key).fetchone()
                    if row is None or row[0] != owner:
                        refused.add(key)
                if refused:
                    write = without_assets(write, refused)
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO predictions (gateway, asset, seq, tick_time, probability, "
                "rul, edge_probability, edge_rul, diff, rul_diff, model_version, "
                "edge_model_version, scored_at, error, scored_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(p.gateway, p.asset, p.seq, p.tick_time, p.probability, p.rul,
                  p.edge_probability, p.edge_rul, p.diff, p.rul_diff, p.model_version,
                  p.edge_model_version, p.scored_at, p.error, owner)
                 for p in write.predictions])
            duplicates = len(write.predictions) - (conn.total_changes - before)
            conn.executemany(
                "INSERT OR IGNORE INTO alerts (gateway, asset, seq, source, old_state, new_state, "
                "probability, rul, model_version, tick_time, published_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(a.gateway, a.asset, a.seq, a.source, a.old_state, a.new_state, a.probability,
                  a.rul, a.model_version, a.tick_time, a.published_at) for a in write.alerts])
            conn.executemany(
                "UPDATE assets SET cloud_seq = ?, cloud_probability = ?, cloud_rul = ?, "
                "cloud_state = ?, cloud_state_since = ?, cloud_model_version = ?, scored_at = ?, "
                "cloud_pending = ?, cloud_pending_count = ? "
                "WHERE gateway = ? AND asset = ? AND coalesce(cloud_seq, -1) < ?",
                [(a.seq, a.probability, a.rul, a.state, a.state_since, a.model_version,
                  a.scored_at, a.pending, a.pending_count, *a.key, a.seq)
                 for a in write.assets])
            self._queue_deliveries(conn, write.deliveries)
        return ScoresStored(refused, duplicates)

    # -- webhook deliveries (cloud_service/notifications.py) --------------------------------

    @staticmethod
    def _queue_deliveries(conn: sqlite3.Connection, deliveries: list[WebhookDelivery]) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO webhook_deliveries (delivery_id, webhook, gateway, asset, "
            "event, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(d.delivery_id, d.webhook, d.gateway, d.asset, d.event, d.created_at,
              d.created_at) for d in deliveries])

    def claim_deliveries(self, replica: str, limit: int, hold: float) -> list[ClaimedDelivery]:
        now = time.time()
        with self._write() as conn:  # the write lock orders claims: no row goes to two
            rows = conn.execute(
                "UPDATE webhook_deliveries SET claimed_by = ?, claimed_until = ? "
                "WHERE id IN (SELECT id FROM webhook_deliveries WHERE status = 'pending' "
                "AND next_attempt_at <= ? AND coalesce(claimed_until, 0) < ? "
                "ORDER BY next_attempt_at, id LIMIT ?) "
                "RETURNING id, delivery_id, webhook, event, attempts, created_at",
                (replica, now + hold, now, now, limit)).fetchall()
        return sorted((ClaimedDelivery(*row) for row in rows), key=lambda d: d.id)

    def finish_delivery(self, delivery: int, replica: str, delivered: bool,
                        error: str | None = None) -> bool:
        with self._write() as conn:
            done = conn.execute(
                "UPDATE webhook_deliveries SET status = ?, attempts = attempts + 1, "
                "finished_at = ?, last_error = ?, claimed_by = NULL, claimed_until = NULL "
                "WHERE id = ? AND claimed_by = ? AND status = 'pending'",
                ("delivered" if delivered else "failed", time.time(), error, delivery,
                 replica)).rowcount
        return done == 1

    def retry_delivery(self, delivery: int, replica: str, delay: float, error: str) -> bool:
        with self._write() as conn:
            done = conn.execute(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ?, "
                "last_error = ?, claimed_by = NULL, claimed_until = NULL "
                "WHERE id = ? AND claimed_by = ? AND status = 'pending'",
                (time.time() + delay, error, delivery, replica)).rowcount
        return done == 1

    def pending_deliveries(self) -> int:
        (n,) = self._db().conn.execute(
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'").fetchone()
        return int(n)
    def write_drift(self, checks: Sequence[DriftCheck], events: Sequence[DriftEventRow],
                    owner: str | None = None) -> set[AssetKey]:
        """Store drift checks and events; with `owner`, only for the assets that replica still
        owns (checked in the transaction). Returns the assets refused."""
        with self._write() as conn:
            refused: set[AssetKey] = set()
            if owner is not None:
                for key in {c.key for c in checks} | {(e.gateway, e.asset) for e in events}:
                    row = conn.execute("SELECT owner FROM assets WHERE gateway = ? AND asset = ?",
                                       key).fetchone()
                    if row is None or row[0] != owner:
                        refused.add(key)
            conn.executemany(
                "INSERT INTO asset_drift (gateway, asset, state, score, ticks, last_seq, "
                "checked_at, model_version, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (gateway, asset) DO UPDATE SET state = excluded.state, "
                "score = excluded.score, ticks = excluded.ticks, last_seq = excluded.last_seq, "
                "checked_at = excluded.checked_at, model_version = excluded.model_version, "
                "detail = excluded.detail",
                [(c.gateway, c.asset, c.state, c.score, c.ticks, c.last_seq, c.checked_at,
                  c.model_version, c.detail) for c in checks if c.key not in refused])
            conn.executemany(
                "INSERT INTO drift_events (gateway, asset, kind, score, features, model_version, "
                "at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.gateway, e.asset, e.kind, e.score, e.features, e.model_version, e.at)
                 for e in events if (e.gateway, e.asset) not in refused])
        return refused

    # -- ownership (cloud_service/ownership.py) ---------------------------------------------

    def heartbeat(self, replica: str, token: str, lease: float) -> Membership:
        """Renew this replica's lease (taking over its id only from an expired holder), try
        for the leader lease, and count live replicas, assets and the assets it owns."""
        now = time.time()
        with self._write() as conn:
            before = conn.total_changes
            conn.execute(
                "INSERT INTO replicas (replica, token, started_at, heartbeat_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (replica) DO UPDATE SET "
                "token = excluded.token, heartbeat_at = excluded.heartbeat_at, "
                "expires_at = excluded.expires_at, started_at = CASE WHEN token = excluded.token "
                "  THEN started_at ELSE excluded.started_at END "
                "WHERE token = excluded.token OR expires_at < excluded.heartbeat_at",
                (replica, token, now, now, now + lease))
            if conn.total_changes == before:
                raise OwnershipError(
                    f"another live replica uses the id {replica!r}; give every replica its "
                    "own client_id")
            before = conn.total_changes
            conn.execute(
                "INSERT INTO leader (id, holder, expires_at) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at WHERE holder = excluded.holder "
                "OR expires_at < ?", (replica, now + lease, now))
            leader = conn.total_changes > before
            (live,) = conn.execute("SELECT count(*) FROM replicas WHERE expires_at >= ?",
                                   (now,)).fetchone()
            (assets,) = conn.execute("SELECT count(*) FROM assets").fetchone()
            (owned,) = conn.execute("SELECT count(*) FROM assets WHERE owner = ?",
                                    (replica,)).fetchone()
        return Membership(live, assets, owned, leader)

    def claim_assets(self, replica: str, limit: int) -> list[AssetKey]:
        """Take up to `limit` assets that have no owner or whose owner's lease expired."""
        if limit <= 0:
            return []
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE assets SET owner = ? WHERE rowid IN (SELECT rowid FROM assets "
                "WHERE owner IS NULL OR owner NOT IN "
                "(SELECT replica FROM replicas WHERE expires_at >= ?) "
                "ORDER BY gateway, asset LIMIT ?) RETURNING gateway, asset",
                (replica, time.time(), limit)).fetchall()
        return [(g, a) for g, a in rows]

    def release_assets(self, replica: str, keys: Iterable[AssetKey]) -> None:
        with self._write() as conn:
            conn.executemany("UPDATE assets SET owner = NULL WHERE owner = ? AND gateway = ? "
                             "AND asset = ?", [(replica, *key) for key in keys])

    def leave(self, replica: str, token: str) -> None:
        """A clean stop: give up every asset and the leases at once, so others need not wait
        for them to expire."""
        with self._write() as conn:
            conn.execute("UPDATE assets SET owner = NULL WHERE owner = ?", (replica,))
            conn.execute("DELETE FROM leader WHERE holder = ?", (replica,))
            conn.execute("DELETE FROM replicas WHERE replica = ? AND token = ?", (replica, token))

    def live_replicas(self, exclude: str | None = None) -> int:
        """Replicas holding a live lease (other than `exclude`)."""
        (n,) = self._db().conn.execute(
            "SELECT count(*) FROM replicas WHERE expires_at >= ? AND replica <> ?",
            (time.time(), exclude or "")).fetchone()
        return int(n)

    def check_writable(self) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO health (id, checked_at) VALUES (1, ?)",
                         (time.time(),))

    def drop_before(self, cutoff: float) -> int:
        """Delete ticks, predictions and shadow scores of ticks older than `cutoff`, a few
        thousand rows per transaction so ingest and scoring are held up only briefly."""
        removed = 0
        # Ticks before predictions: a window whose prediction was gone but its tick not would
        # look unscored to a scorer recovering at that moment.
        for table, column in (("shadow_scores", None), ("ticks", "time"),
                              ("predictions", "tick_time")):
            while True:
                with self._write() as conn:
                    if column is None:  # shadow scores carry no time: follow their ticks
                        cur = conn.execute(
                            "DELETE FROM shadow_scores WHERE rowid IN (SELECT s.rowid FROM "
                            "shadow_scores s JOIN ticks t ON t.gateway = s.gateway AND "
                            "t.asset = s.asset AND t.seq = s.seq WHERE t.time < ? LIMIT ?)",
                            (cutoff, RETENTION_BATCH))
                    else:
                        cur = conn.execute(
                            f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "
                            f"WHERE {column} < ? LIMIT ?)", (cutoff, RETENTION_BATCH))
                    count = cur.rowcount
                if table != "shadow_scores":
                    removed += count
                if count < RETENTION_BATCH:
                    break
        return removed

    # -- models (the reads the API shares are in reads.py) ----------------------------------

    def register_model(self, record: ModelRow) -> tuple[ModelRow, bool]:
        """Insert a model; (record, True) when new, (stored, False) when the same version with
        the same content is already there. Other content under a known version: ModelConflict."""
        with self._write() as conn:
            row = conn.execute("SELECT sha256 FROM models WHERE version = ?",
                               (record["version"],)).fetchone()
            if row is not None:
                if row[0] != record["sha256"]:
                    raise ModelConflict(
                        f"model version {record['version']} is already registered with other "
                        "content; give the new bundle a new version")
                created = False
            else:
                cols = ", ".join(f'"{c}"' for c in record)
                marks = ", ".join("?" for _ in record)
                conn.execute(f"INSERT INTO models ({cols}) VALUES ({marks})",
                             tuple(record.values()))
                created = True
        stored = self.model(record["version"])
        assert stored is not None
        return stored, created

    # -- rollouts --------------------------------------------------------------------------

    def create_rollout(self, rollout: RolloutRow, targets: list[TargetRequest]) -> None:
        with self._write() as conn:
            cols = ", ".join(rollout)
            conn.execute(f"INSERT INTO rollouts ({cols}) VALUES "
                         f"({', '.join('?' for _ in rollout)})", tuple(rollout.values()))
            conn.executemany(
                "INSERT INTO rollout_targets (rollout_id, gateway, from_version, step, "
                "updated_at) VALUES (?, ?, ?, ?, ?)",
                [(rollout["id"], t["gateway"], t["from_version"], t["step"],
                  rollout["created_at"]) for t in targets])

    def shadow_report(self, version: str, shadow_cut: float, cut: float) -> list[ShadowRow]:
        """Per asset, how the shadow model `version` compares with the active edge model
        (same windows) and with the cloud's full model where it scored them. Decisions are
        taken at `shadow_cut` for the shadow's scores and at `cut` for the others."""
        return cast(list[ShadowRow], self._rows(
            "SELECT s.gateway, s.asset, count(*) AS windows, "
            "min(s.seq) AS first_seq, max(s.seq) AS last_seq, "
            "avg(abs(s.probability - t.edge_probability)) AS mean_abs_diff_active, "
            "avg((s.probability >= :sc) = (t.edge_probability >= :c)) AS agreement_active, "
            "count(p.seq) AS cloud_scored, "
            "avg(abs(s.probability - p.probability)) AS mean_abs_diff_cloud, "
            "avg(CASE WHEN p.seq IS NOT NULL THEN (s.probability >= :sc) = "
            "  (p.probability >= :c) END) AS agreement_cloud, "
            "avg(CASE WHEN p.seq IS NOT NULL THEN (t.edge_probability >= :c) = "
            "  (p.probability >= :c) END) AS active_agreement_cloud, "
            "sqrt(avg((s.rul - p.rul) * (s.rul - p.rul))) AS rul_rmse_cloud, "
            "sqrt(avg((t.edge_rul - p.rul) * (t.edge_rul - p.rul))) AS active_rul_rmse_cloud, "
            "group_concat(DISTINCT t.model_version) AS active_versions "
            "FROM shadow_scores s "
            "JOIN ticks t ON t.gateway = s.gateway AND t.asset = s.asset AND t.seq = s.seq "
            "LEFT JOIN predictions p ON p.gateway = s.gateway AND p.asset = s.asset "
            "  AND p.seq = s.seq AND p.error IS NULL "
            "WHERE s.model_version = :v AND t.edge_probability IS NOT NULL "
            "GROUP BY s.gateway, s.asset ORDER BY s.gateway, s.asset",
            {"v": version, "sc": shadow_cut, "c": cut}))

    def update_rollout(self, rollout_id: str, state: str,
                       steps: dict[str, tuple[str, str | None]]) -> None:
        """Set the rollout's state and, per gateway, the step the cloud just took."""
        now = time.time()
        with self._write() as conn:
            conn.execute("UPDATE rollouts SET state = ?, updated_at = ? WHERE id = ?",
                         (state, now, rollout_id))
            conn.executemany(
                "UPDATE rollout_targets SET step = ?, reason = ?, updated_at = ? "
                "WHERE rollout_id = ? AND gateway = ?",
                [(step, reason, now, rollout_id, gw) for gw, (step, reason) in steps.items()])



def _statements(script: str) -> list[str]:
    """Split a migration script into statements (ours hold no ';' inside literals)."""
    return [s.strip() for s in script.split(";") if s.strip()]
