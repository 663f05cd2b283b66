"""The two store backends side by side, without MQTT or a model: ticks written per second
through `write_ingest` (groups of batches, as ingest commits them), window reads per second
(the scorer's `window_ticks`), predictions written per second (`write_scores`), and bytes per
stored tick with its prediction (indexes included), which gives the disk per asset per day.

SQLite is a file in a temporary folder (synchronous FULL, the default); PostgreSQL is a
private server started for the run (tests/support/postgres.py: no fsync, so its figures are
an upper bound for a durable server) unless `--url` names one.

    .venv/bin/python -m bench.store_backends [--assets 50] [--ticks 2000] [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import save, table
from cloud_service.config import StoreConfig
from cloud_service.store import PredictionRow, Received, ScoreWrite, Store, open_store
from cloud_service.store.postgres import PostgresStore
from cloud_service.store.sqlite import SqliteStore
from contract.payloads import UplinkBatch
from tests.support.postgres import PostgresServer

FEATURES = tuple(f"sensor_{i}" for i in (2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21))
BATCH, GROUP, T0 = 50, 20, 1_800_000_000.0


def batches(assets: int, ticks: int) -> list[list[Received]]:
    """Groups of GROUP batches of BATCH ticks, assets interleaved as gateways send them."""
    items = []
    for first in range(0, ticks, BATCH):
        for a in range(assets):
            rng = np.random.default_rng(first * assets + a)
            items.append(UplinkBatch(
                gateway=f"gw-{a // 10:04d}", asset=f"engine-{a:04d}", first_seq=first,
                timestamps=T0 + np.arange(first, first + BATCH),
                features=FEATURES, values=rng.normal(0, 1, (BATCH, 14)).astype(np.float32),
                probability=rng.uniform(0, 1, BATCH).astype(np.float32),
                rul=np.full(BATCH, 87.5, np.float32), model_version="fd001-1.0"))
    now = time.time()
    return [[Received(b, now) for b in items[i:i + GROUP]] for i in range(0, len(items), GROUP)]


def measure(store: Store, assets: int, ticks: int) -> dict:
    groups = batches(assets, ticks)
    n = assets * ticks
    t0 = time.perf_counter()
    for group in groups:
        store.write_ingest(group, [], [])
    ingest = time.perf_counter() - t0
    t0 = time.perf_counter()
    read = 0
    for a in range(assets):  # the scorer reads windows a few hundred ticks at a time
        for lo in range(0, ticks, 256):
            read += len(store.window_ticks((f"gw-{a // 10:04d}", f"engine-{a:04d}"), lo,
                                           lo + 255).seqs)
    reads = time.perf_counter() - t0
    now = time.time()
    preds = [PredictionRow(f"gw-{a // 10:04d}", f"engine-{a:04d}", s, T0 + s, 0.12, 87.1, 0.1,
                           87.5, 0.02, 0.4, "fd001-1.0", "fd001-1.0", now)
             for a in range(assets) for s in range(ticks)]
    t0 = time.perf_counter()
    for i in range(0, len(preds), 512):  # the scorer's batch
        store.write_scores(ScoreWrite(predictions=preds[i:i + 512]))
    scores = time.perf_counter() - t0
    return {"ticks": n, "ticks_per_s": n / ingest, "window_ticks_read_per_s": read / reads,
            "predictions_per_s": len(preds) / scores,
            "bytes_per_tick": size(store) / n}


def size(store: Store) -> int:
    if isinstance(store, SqliteStore):
        store._db().conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return os.path.getsize(store.path)
    assert isinstance(store, PostgresStore)
    rows = store._rows(
        "SELECT sum(pg_total_relation_size(i.inhrelid)) AS n FROM pg_inherits i "
        "WHERE i.inhparent IN (to_regclass('ticks'), to_regclass('predictions'))")
    return int(rows[0]["n"] or 0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--assets", type=int, default=50)
    ap.add_argument("--ticks", type=int, default=2000, help="per asset")
    ap.add_argument("--url", help="a PostgreSQL store URL (default: a private server)")
    args = ap.parse_args(argv if argv is not None else [])
    work = Path(tempfile.mkdtemp(prefix="pdm-bench-store-"))
    results = {}
    sqlite = open_store(StoreConfig(url=f"sqlite:///{work / 'cloud.db'}"))
    try:
        results["sqlite"] = measure(sqlite, args.assets, args.ticks)
    finally:
        sqlite.close()
    server = None
    url = args.url
    if url is None:
        server = PostgresServer(Path(tempfile.mkdtemp(prefix="pdm-pg-bench-"))).start()
        url = server.create_database("bench")
    try:
        pg = open_store(StoreConfig(url=url))
        try:
            results["postgresql"] = measure(pg, args.assets, args.ticks)
        finally:
            pg.close()
    finally:
        if server is not None:
            server.stop("immediate")
            shutil.rmtree(server.workdir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    rows = [[name, r["ticks_per_s"], r["window_ticks_read_per_s"], r["predictions_per_s"],
             r["bytes_per_tick"], r["bytes_per_tick"] * 86_400 / 1e6]
            for name, r in results.items()]
    table(f"store backends, {args.assets} assets x {args.ticks} ticks (14 features)",
          ["backend", "ticks written/s", "window ticks read/s", "predictions written/s",
           "bytes per tick + prediction", "MB per asset-day at 1 tick/s"], rows)
    save("store_backends", {"assets": args.assets, "ticks_per_asset": args.ticks, **results})


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
