"""Alert webhooks: how long queueing deliveries adds to the scorer's write, and how fast the
workers drain the queue to a local HTTP receiver (each delivery one POST and one store
transaction), with one worker on SQLite and one and three workers (replicas) on PostgreSQL.

PostgreSQL is a private server started for the run (tests/support/postgres.py, no fsync).

    .venv/bin/python -m bench.webhooks [--deliveries 1000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

from bench.common import save, table
from cloud_service.config import NotificationsConfig, StoreConfig
from cloud_service.metrics import Metrics
from cloud_service.notifications import WebhookSender, plan_deliveries
from cloud_service.store import ScoreWrite, Store, open_store
from contract.payloads import AlertEvent, AlertState
from tests.support.postgres import PostgresServer
from tests.support.receiver import WebhookReceiver


def alerts(n: int) -> list[AlertEvent]:
    return [AlertEvent(source="cloud", gateway="gw-1", asset=f"engine-{i}",
                       old_state=AlertState.NORMAL, new_state=AlertState.CRITICAL,
                       probability=0.93, rul=12.0, thresholds={"warning_enter": 0.5},
                       model_version="bench", seq=100 + i, tick_time=1.8e9 + i,
                       published_at=time.time()) for i in range(n)]


def measure(stores: list[Store], n: int) -> dict:
    receiver = WebhookReceiver().start()
    cfg = NotificationsConfig(webhooks=[{"name": "ops", "url": receiver.url}], batch=32)
    write = ScoreWrite()
    for event in alerts(n):
        write.deliveries.extend(plan_deliveries(event, cfg.webhooks))
    t0 = time.perf_counter()
    stores[0].write_scores(write)
    queued = time.perf_counter() - t0
    senders = [WebhookSender(s, cfg, Metrics(), replica=f"r{i}") for i, s in enumerate(stores)]

    def drain(sender: WebhookSender) -> None:
        while sender.drain_once():
            pass

    threads = [threading.Thread(target=drain, args=(s,)) for s in senders]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    drained = time.perf_counter() - t0
    for s in senders:
        s.stop()
    receiver.stop()
    ids = [r.headers["X-PDM-Delivery"] for r in receiver.accepted()]
    assert len(ids) == len(set(ids)) == n, "a delivery was lost or sent twice"
    return {"deliveries": n, "workers": len(stores), "queue_ms_per_1000": queued / n * 1e6,
            "delivered_per_s": n / drained}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deliveries", type=int, default=1000)
    args = ap.parse_args(argv if argv is not None else [])
    n = args.deliveries
    results = {}
    work = Path(tempfile.mkdtemp(prefix="pdm-bench-webhooks-"))
    sqlite = open_store(StoreConfig(url=f"sqlite:///{work / 'cloud.db'}"))
    try:
        results["sqlite, 1 worker"] = measure([sqlite], n)
    finally:
        sqlite.close()
        shutil.rmtree(work, ignore_errors=True)
    pg_work = Path(tempfile.mkdtemp(prefix="pdm-pg-bench-"))
    server = PostgresServer(pg_work).start()
    try:
        for workers in (1, 3):
            url = server.create_database(f"bench{workers}")
            stores = [open_store(StoreConfig(url=url)) for _ in range(workers)]
            try:
                name = f"postgresql, {workers} worker{'s' if workers > 1 else ''}"
                results[name] = measure(stores, n)
            finally:
                for s in stores:
                    s.close()
    finally:
        server.stop("immediate")
        shutil.rmtree(pg_work, ignore_errors=True)
    table("Webhook queue (local receiver)", ["store, workers", "ms to queue 1000", "delivered/s"],
          [[k, v["queue_ms_per_1000"], v["delivered_per_s"]] for k, v in results.items()])
    save("webhooks", {"results": results})


if __name__ == "__main__":
    main()
