"""Cloud end to end through Mosquitto: ticks ingested and windows scored per second by one
replica and by two replicas on the shared subscription, side by side in one run.

Each replica is a `python -m cloud_service run` process; both share one SQLite file (WAL, one
host). With a store per replica a window whose ticks arrived at different replicas would never
be complete anywhere: replicas must share their store (PostgreSQL across hosts).
The load: FD001 test engines (real readings, the default
bundle's features), 100 assets x 50-tick batches, published as fast as the broker takes them.

    .venv/bin/python -m bench.cloud_ingest [--copies 4]
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import yaml

from bench.common import BUNDLE, BUNDLE_KEY, DATA, REPO, save, table
from contract import codec, topics
from contract.bundle import read_manifest
from contract.cmapss import COLUMNS, read_cmapss
from contract.payloads import UplinkBatch
from tests.support.broker import Mosquitto, free_port

TOKEN = "bench-token-0123456789"
GW = "gw-bench"
BATCH = 50


def batches(copies: int) -> list[bytes]:
    manifest = read_manifest(BUNDLE)
    rows = read_cmapss(DATA / "test_FD001.txt")
    cols = [COLUMNS.index(f) for f in manifest.features]
    out = []
    for c in range(copies):
        for unit in np.unique(rows[:, 0]).astype(int):
            values = rows[rows[:, 0] == unit][:, cols].astype(np.float32)
            for first in range(0, len(values), BATCH):
                chunk = values[first:first + BATCH]
                nan = np.full(len(chunk), np.nan, np.float32)
                out.append(codec.encode_uplink(UplinkBatch(
                    gateway=GW, asset=f"c{c}-e{unit}", first_seq=first,
                    timestamps=1.8e9 + first + np.arange(len(chunk), dtype=np.float64),
                    features=tuple(manifest.features), values=chunk, probability=nan,
                    rul=nan, model_version="bench")))
    return out


def expected(copies: int, window: int) -> tuple[int, int]:
    lengths = np.unique(read_cmapss(DATA / "test_FD001.txt")[:, 0], return_counts=True)[1]
    return int(lengths.sum()) * copies, int(np.maximum(lengths - window + 1, 0).sum()) * copies


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def distinct_predictions(db: Path) -> int:
    """Windows with a stored prediction. Replicas sharing one store may both score a window
    (the second insert changes nothing), so their metrics can count it twice."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
    except sqlite3.Error:
        return 0


def run(broker: Mosquitto, work: Path, replicas: int, payloads: list[bytes],
        ticks: int, windows: int) -> dict:
    procs, ports = [], []
    group = f"bench{replicas}"
    try:
        for i in range(replicas):
            port = free_port()
            doc = {"broker": {"host": broker.host, "port": broker.port},
                   "client_id": f"{group}-{i}", "share_group": group,
                   "store": {"url": f"sqlite:///{work / f'{group}.db'}"},  # one file, WAL
                   "bundle": {"path": str(BUNDLE), "trusted_keys": [str(BUNDLE_KEY)]},
                   "registry": {"path": str(work / f"{group}-{i}-bundles")},
                   "api_token": TOKEN, "http": {"host": "127.0.0.1", "port": port},
                   "log": {"level": "WARNING"}}
            cfg = work / f"{group}-{i}.yaml"
            cfg.write_text(yaml.safe_dump(doc))
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "cloud_service", "run", "--config", str(cfg)], cwd=REPO,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            ports.append(port)
        for port in ports:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica on port {port} not ready")
                time.sleep(0.2)

        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                          client_id=f"bench-pub-{replicas}")
        pub.max_inflight_messages_set(100)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        t0 = time.perf_counter()
        infos = [pub.publish(topics.uplink(GW), p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(60)
        published = time.perf_counter() - t0
        stored = scored = 0.0
        t_stored = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            texts = [httpx.get(f"http://127.0.0.1:{p}/metrics", timeout=10).text for p in ports]
            stored = sum(metric(t, "pdm_cloud_ticks_received_total") for t in texts)
            calls = sum(metric(t, "pdm_cloud_windows_scored_total") for t in texts)
            scored = distinct_predictions(work / f"{group}.db")
            if stored >= ticks and t_stored is None:
                t_stored = time.perf_counter() - t0
            if stored >= ticks and scored >= windows:
                break
            time.sleep(0.05)
        done = time.perf_counter() - t0
        pub.loop_stop()
        pub.disconnect()
        return {"replicas": replicas, "ticks": ticks, "windows": windows,
                "stored": stored, "scored": scored, "scored_incl_repeats": calls,
                "publish_s": published,
                "ingest_s": t_stored, "total_s": done,
                "ticks_per_s": ticks / t_stored if t_stored else None,
                "windows_per_s": scored / done}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


def main(copies: int = 4) -> dict:
    payloads = batches(copies)
    ticks, windows = expected(copies, read_manifest(BUNDLE).window)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker").start()
        try:
            results = [run(broker, work, n, payloads, ticks, windows) for n in (1, 2)]
        finally:
            broker.stop()
    one = results[0]
    table(f"Cloud ingest + scoring through Mosquitto ({len(payloads)} batches of <= {BATCH} "
          f"ticks, {ticks} ticks, {windows} windows; 2 cores shared by broker, publisher and "
          "replicas)",
          ["replicas", "ticks stored/s", "windows scored/s", "all stored after s",
           "all scored after s", "windows scored twice", "vs 1 replica"],
          [[r["replicas"], r["ticks_per_s"], r["windows_per_s"], r["ingest_s"], r["total_s"],
            int(r["scored_incl_repeats"] - r["scored"]),
            f"{r['windows_per_s'] / one['windows_per_s']:.2f}x"] for r in results])
    record = {"copies": copies, "batch": BATCH, "results": results}
    save("cloud_ingest", record)
    return record


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="copies of the 100 test engines")
    main(parser.parse_args().copies)
