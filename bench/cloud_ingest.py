"""Cloud end to end through Mosquitto: ticks ingested and windows scored per second by 1..N
replicas on the shared subscription, on SQLite and on PostgreSQL, side by side in one run; and
what a replica SIGKILLed mid-run costs (ticks lost or stored twice, windows scored twice).

Each replica is a `python -m cloud_service run` process; all replicas of one run share one
store (one SQLite file in WAL mode on this host, or one PostgreSQL database: the benchmark
starts a private server unless `--store-url` names one). The load: FD001 test engines (real
readings, the default bundle's features), `--copies` x 100 assets in 50-tick batches, published
as fast as the broker takes them.

    .venv/bin/python -m bench.cloud_ingest --store sqlite,postgresql --replicas 1,2,3 \\
        [--kill-replica-after 3] [--json runs.json] [--copies 4]

The killed replica is started again `--restart-after` seconds later with the same MQTT client
id, as a supervisor (compose `restart:`, Kubernetes) would: Mosquitto keeps the QoS 1 messages
it had in flight to it for its session, and only that client id collects them.

Windows scored twice: every replica counts the windows it ran the model on
(`pdm_cloud_windows_scored_total`); their sum minus the distinct predictions in the store is
the number of repeated model runs. A killed replica's count is its last scrape, taken just
before the SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import yaml
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench.common import BUNDLE, BUNDLE_KEY, DATA, REPO, console, save, table

# Not the test fixture's server: that one runs with fsync off for speed, and this comparison is
# against SQLite with synchronous=FULL; both stores must make a commit durable.
from bench.pgserver import PostgresServer
from contract import codec, topics
from contract.bundle import read_manifest
from contract.cmapss import COLUMNS, read_cmapss
from contract.payloads import UplinkBatch
from tests.support.broker import Mosquitto, free_port
from tests.support.stores import StoreUrlError, store_section

TOKEN = "bench-token-0123456789"
GW = "gw-bench"
BATCH = 50
STORES = ("sqlite", "postgresql")


class BenchError(RuntimeError):
    """A run could not be set up or did not finish."""


class RunRecord(TypedDict):
    """One run, as written by --json (exactly these keys)."""

    store: str
    replicas: int
    killed: bool
    windows_per_s: float
    ticks_sent: int
    ticks_stored: int
    ticks_lost: int
    ticks_duplicated: int
    windows_expected: int
    windows_scored: int
    windows_scored_twice: int


@dataclass(frozen=True)
class Load:
    payloads: list[bytes]
    ticks: int
    windows: int


@dataclass(frozen=True)
class RunSpec:
    store: str
    replicas: int
    killed: bool


@dataclass(frozen=True)
class StoreCounts:
    tick_rows: int
    ticks_distinct: int
    predictions_distinct: int


def make_load(copies: int) -> Load:
    """`copies` x the 100 FD001 test engines as uplink batches, and what they must yield."""
    manifest = read_manifest(BUNDLE)
    rows = read_cmapss(DATA / "test_FD001.txt")
    cols = [COLUMNS.index(f) for f in manifest.columns]
    payloads = []
    for copy in range(copies):
        for unit in np.unique(rows[:, 0]).astype(int):
            values = rows[rows[:, 0] == unit][:, cols].astype(np.float32)
            for first in range(0, len(values), BATCH):
                chunk = values[first:first + BATCH]
                nan = np.full(len(chunk), np.nan, np.float32)
                payloads.append(codec.encode_uplink(UplinkBatch(
                    gateway=GW, asset=f"c{copy}-e{unit}", first_seq=first,
                    timestamps=1.8e9 + first + np.arange(len(chunk), dtype=np.float64),
                    features=tuple(manifest.columns), values=chunk, probability=nan,
                    rul=nan, model_version="bench")))
    lengths = np.unique(rows[:, 0], return_counts=True)[1]
    windows = int(np.maximum(lengths - manifest.window + 1, 0).sum()) * copies
    return Load(payloads, int(lengths.sum()) * copies, windows)


def metric(text: str, name: str) -> float:
    """Sum of one Prometheus series over its labels."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def count_store(url: str) -> StoreCounts:
    """Tick rows, distinct ticks and distinct predicted windows of the bench gateway. Distinct
    by (asset, seq): a time-partitioned table's key includes the time, so it does not prevent
    a tick stored twice; this count sees it."""
    queries = [
        "SELECT count(*) FROM ticks WHERE gateway = {p}",
        "SELECT count(*) FROM (SELECT DISTINCT asset, seq FROM ticks WHERE gateway = {p}) t",
        "SELECT count(*) FROM (SELECT DISTINCT asset, seq FROM predictions "
        "WHERE gateway = {p}) t",
    ]
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
                got = [conn.execute(q.format(p="?"), (GW,)).fetchone()[0] for q in queries]
        except sqlite3.Error:
            return StoreCounts(0, 0, 0)  # not created yet
        return StoreCounts(*got)
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            got = [conn.execute(q.format(p="%s"), (GW,)).fetchone()[0] for q in queries]
    except psycopg.errors.UndefinedTable:
        return StoreCounts(0, 0, 0)
    return StoreCounts(*got)


def store_bytes(url: str) -> int:
    """Bytes the store takes on disk for its tables and indexes (all of them: ticks and
    predictions are nearly everything after a run)."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        # page_count sees the pages still in the WAL too; free pages are reusable, not counted.
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = conn.execute("PRAGMA page_size").fetchone()[0]
        return (pages - free) * size
    import psycopg

    # Plain tables and partitions with their indexes and TOAST; a partitioned parent has none.
    with psycopg.connect(url, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', "
            "'information_schema') AND n.nspname NOT LIKE 'pg_toast%'").fetchone()
    return int(row[0])


def cpu_seconds(pid: int, with_children: bool = False) -> float:
    """CPU time of one process so far (user + system); with its exited children's, which is how
    a PostgreSQL server's finished backends are counted. 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])             # utime, stime
    if with_children:
        ticks += int(fields[13]) + int(fields[14])        # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(postmaster: int | None) -> float:
    """A PostgreSQL server: the postmaster, its finished children and the live ones."""
    if postmaster is None:
        return 0.0
    total = cpu_seconds(postmaster, with_children=True)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:                  # ppid
            total += cpu_seconds(int(stat.parent.name))
    return total


@dataclass
class CpuMeter:
    """Where the CPU went during a run: replicas, the PostgreSQL server, the broker. With
    everything on two cores, it says what a faster figure would need."""

    broker_pid: int
    postmaster: int | None
    start: dict[str, float] = field(default_factory=dict)

    def sample(self, replicas: list[Replica]) -> dict[str, float]:
        return {"replicas": sum(cpu_seconds(r.proc.pid) for r in replicas if r.proc),
                "postgresql": server_cpu_seconds(self.postmaster),
                "broker": cpu_seconds(self.broker_pid),
                "bench": cpu_seconds(os.getpid())}

    def begin(self, replicas: list[Replica]) -> None:
        self.start = self.sample(replicas)

    def used(self, replicas: list[Replica], killed_s: float) -> dict[str, float]:
        """CPU seconds since `begin`; a killed replica's earlier incarnation adds `killed_s`."""
        now = self.sample(replicas)
        used = {k: round(now[k] - self.start.get(k, 0.0), 1) for k in now}
        used["replicas"] = round(used["replicas"] + killed_s, 1)
        return used


@dataclass
class Replica:
    """One cloud process; survives a SIGKILL and a restart as the same client id and port."""

    index: int
    config: Path
    log: Path
    port: int
    proc: subprocess.Popen | None = None
    scored_before: float = 0.0   # windows counted by earlier (killed) incarnations
    scored_now: float = 0.0      # the live incarnation's count at the last scrape
    stored_now: float = 0.0
    restarts: int = field(default=0)

    def start(self) -> None:
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cloud_service", "run", "--config", str(self.config)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def scrape(self) -> bool:
        """Refresh the counters from /metrics; False when it does not answer."""
        try:
            text = httpx.get(f"{self.url}/metrics", timeout=5).text
        except httpx.HTTPError:
            return False
        self.scored_now = metric(text, "pdm_cloud_windows_scored_total")
        self.stored_now = metric(text, "pdm_cloud_ticks_received_total")
        return True

    def kill(self) -> float:
        """Last scrape, then SIGKILL: its count so far joins the earlier incarnations'. Returns
        the CPU seconds the process had used."""
        self.scrape()
        assert self.proc is not None
        cpu = cpu_seconds(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.scored_before += self.scored_now
        self.scored_now = self.stored_now = 0.0
        return cpu

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def scored(self) -> float:
        return self.scored_before + self.scored_now

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def readiness(replica: Replica) -> str | None:
    """None when /readyz says ready, else why not (its body, or that it does not answer)."""
    try:
        r = httpx.get(f"{replica.url}/readyz", timeout=5)
    except httpx.HTTPError as exc:
        return f"no answer yet ({type(exc).__name__})"
    return None if r.status_code == 200 else f"{r.status_code} {r.text[:300]}"


def wait_ready(replicas: list[Replica], timeout: float, every: float = 15) -> float:
    """Until every replica is ready. Loading TensorFlow in N processes at once on 2 busy cores
    takes a while: report who waits for what every `every` seconds rather than give up early;
    fail at once, with its log, when a replica exits."""
    t0 = time.monotonic()
    next_report = t0 + every
    waiting = list(replicas)
    while waiting:
        for replica in list(waiting):
            if not replica.alive:
                raise BenchError(f"replica {replica.index} exited while starting; its log "
                                 f"({replica.log}):\n{replica.log_tail()}")
            if readiness(replica) is None:
                waiting.remove(replica)
        now = time.monotonic()
        if waiting and now > t0 + timeout:
            raise BenchError(
                f"{len(waiting)} of {len(replicas)} replica(s) not ready after {timeout:.0f} s: "
                + "; ".join(f"#{r.index} on :{r.port}: {readiness(r)}" for r in waiting)
                + f"\nlast log lines of #{waiting[0].index}:\n{waiting[0].log_tail()}")
        if waiting and now >= next_report:
            console.print(f"  {len(replicas) - len(waiting)}/{len(replicas)} replicas ready "
                          f"after {now - t0:.0f} s; waiting for "
                          + ", ".join(f"#{r.index} ({readiness(r)})" for r in waiting))
            next_report = now + every
        if waiting:
            time.sleep(0.25)
    return time.monotonic() - t0


def publish_all(broker: Mosquitto, payloads: list[bytes], name: str,
                done: Callable[[float], None]) -> None:
    """Publish every batch at QoS 1 and wait for the broker's acknowledgements."""
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=name)
    pub.max_inflight_messages_set(100)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    t0 = time.perf_counter()
    try:
        infos = [pub.publish(topics.uplink(GW), p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(120)
    finally:
        done(time.perf_counter() - t0)
        pub.loop_stop()
        pub.disconnect()


@dataclass
class Options:
    kill_after: float = 0.0
    restart_after: float = 5.0
    ready_timeout: float = 600.0
    run_timeout: float = 600.0


def run(spec: RunSpec, broker: Mosquitto, work: Path, store_url: str, load: Load,
        opts: Options, postmaster: int | None = None) -> tuple[RunRecord, dict]:
    """One run: start the replicas on a fresh store, publish the load, wait until every tick
    is stored and every window scored (or the time is up), count from the store."""
    tag = f"{spec.store}-{spec.replicas}{'-killed' if spec.killed else ''}"
    group = tag.replace("-", "")
    replicas = []
    for i in range(spec.replicas):
        port = free_port()
        doc = {"broker": {"host": broker.host, "port": broker.port},
               "client_id": f"bench-{group}-{i}", "share_group": group,
               "store": store_section(store_url),
               "bundle": {"path": str(BUNDLE), "trusted_keys": [str(BUNDLE_KEY)]},
               "registry": {"path": str(work / f"{tag}-{i}-bundles")},
               "api_token": TOKEN, "http": {"host": "127.0.0.1", "port": port},
               "log": {"level": "WARNING"}}
        cfg = work / f"{tag}-{i}.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        replicas.append(Replica(i, cfg, work / f"{tag}-{i}.log", port))
    try:
        console.print(f"[bold]{tag}[/]: starting {spec.replicas} replica(s) on {spec.store}")
        for replica in replicas:
            replica.start()
        ready_s = wait_ready(replicas, opts.ready_timeout)
        console.print(f"  ready after {ready_s:.0f} s")
        assert broker.proc is not None
        meter = CpuMeter(broker.proc.pid, postmaster if spec.store == "postgresql" else None)
        meter.begin(replicas)
        killed_cpu = 0.0

        published: list[float] = []
        t0 = time.perf_counter()
        publisher = threading.Thread(target=publish_all, daemon=True, args=(
            broker, load.payloads, f"bench-pub-{group}", published.append))
        publisher.start()
        victim = replicas[-1] if spec.killed else None
        killed_at = restarted_at = None
        t_stored = t_done = None
        counts = StoreCounts(0, 0, 0)
        last_count = 0.0
        with Progress(TextColumn("  {task.description}"), BarColumn(), TextColumn(
                "{task.completed:,.0f}/{task.total:,.0f}"), TimeElapsedColumn(),
                console=console, transient=True) as bar:
            ticks_task = bar.add_task("ticks stored", total=load.ticks)
            windows_task = bar.add_task("windows scored", total=load.windows)
            while True:
                now = time.perf_counter() - t0
                if victim and killed_at is None and now >= opts.kill_after:
                    killed_cpu = victim.kill()
                    killed_at = now
                    console.print(f"  SIGKILL replica #{victim.index} at {now:.1f} s")
                if (victim and killed_at is not None and restarted_at is None
                        and opts.restart_after >= 0 and now >= killed_at + opts.restart_after):
                    victim.start()
                    victim.restarts += 1
                    restarted_at = now
                    console.print(f"  replica #{victim.index} started again at {now:.1f} s")
                for replica in replicas:
                    if replica.alive:
                        replica.scrape()
                # The store is the truth, but counting it costs the replicas CPU: often once
                # the metrics say all is there (or a killed replica's count went with it).
                stored = sum(r.stored_now for r in replicas)
                scored = sum(r.scored for r in replicas)
                interval = (0.1 if published and stored >= load.ticks and scored >= load.windows
                            else 0.5 if killed_at is not None else 2.0)
                if now >= last_count + interval:
                    counts = count_store(store_url)
                    last_count = now
                bar.update(ticks_task,
                           completed=max(counts.ticks_distinct, min(stored, load.ticks)))
                bar.update(windows_task, completed=counts.predictions_distinct)
                if published and t_stored is None and counts.ticks_distinct >= load.ticks:
                    t_stored = now
                if (published and counts.ticks_distinct >= load.ticks
                        and counts.predictions_distinct >= load.windows):
                    t_done = now
                    break
                if now > opts.run_timeout:
                    console.print(f"[red]  not complete after {opts.run_timeout:.0f} s[/]")
                    break
                time.sleep(0.1)
        publisher.join(5)
        # Settle: a replica still busy could yet store a duplicate or score a window again.
        time.sleep(1.0)
        for replica in replicas:
            if replica.alive:
                replica.scrape()
        counts = count_store(store_url)
        elapsed = t_done if t_done is not None else time.perf_counter() - t0
        scored_total = sum(r.scored for r in replicas)
        record: RunRecord = {
            "store": spec.store, "replicas": spec.replicas, "killed": spec.killed,
            "windows_per_s": round(counts.predictions_distinct / elapsed, 1),
            "ticks_sent": load.ticks, "ticks_stored": counts.ticks_distinct,
            "ticks_lost": load.ticks - counts.ticks_distinct,
            "ticks_duplicated": counts.tick_rows - counts.ticks_distinct,
            "windows_expected": load.windows, "windows_scored": counts.predictions_distinct,
            "windows_scored_twice": int(round(scored_total - counts.predictions_distinct)),
        }
        cpu = meter.used(replicas, killed_cpu)
        size = store_bytes(store_url)
        extra = {"ready_s": ready_s, "store_bytes": size,
                 "store_bytes_per_tick": size / max(counts.ticks_distinct, 1),
                 "publish_s": published[0] if published else None,
                 "all_stored_s": t_stored, "all_scored_s": t_done, "killed_at_s": killed_at,
                 "restarted_at_s": restarted_at,
                 "ticks_per_s": load.ticks / t_stored if t_stored else None,
                 "model_runs": scored_total, "cpu_s": cpu}
        return record, extra
    finally:
        for replica in replicas:
            replica.stop()


def store_url_for(store: str, spec: RunSpec, work: Path, server: PostgresServer | None,
                  given: str | None, runs: int) -> str:
    """A fresh store per run: a new SQLite file, or a new database on the server."""
    name = f"bench_{runs}_{spec.replicas}{'_killed' if spec.killed else ''}"
    if store == "sqlite":
        return f"sqlite:///{work / (name + '.db')}"
    if server is not None:
        return server.create_database(name)
    assert given is not None
    return given  # an existing database: counted by gateway, so reruns need a fresh one


def parse_list(text: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if allowed:
        for item in items:
            if item not in allowed:
                raise argparse.ArgumentTypeError(f"{item!r}: expected one of {allowed}")
    return items


def main(stores: list[str] | None = None, replicas: list[int] | None = None,
         kill_after: float | None = None, copies: int = 12, store_url: str | None = None,
         json_path: Path | None = None, opts: Options | None = None,
         extra_killed_run: bool = True) -> list[RunRecord]:
    """The runs asked for; without arguments (`make bench`): both stores with 1 and 2
    replicas, and 2 replicas on PostgreSQL with one killed 3 s into the run."""
    stores = stores or list(STORES)
    replicas = replicas or [1, 2]
    opts = opts or Options()
    specs = [RunSpec(s, n, kill_after is not None) for s in stores for n in replicas]
    if kill_after is None and extra_killed_run and "postgresql" in stores:
        specs.append(RunSpec("postgresql", max(2, max(replicas)), True))
    opts.kill_after = kill_after if kill_after is not None else 3.0
    load = make_load(copies)
    records: list[RunRecord] = []
    details: list[dict] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pdm-bench-") as tmp:
        work = Path(tmp)
        # The broker saves once a minute (no broker is killed here): its cost per message stays
        # flat however long the queue for a slow replica grows.
        broker = Mosquitto(work / "broker", save_every_change=False).start()
        server = None
        try:
            if "postgresql" in stores and store_url is None:
                # Its own temporary folder: the server's user must be able to reach it.
                try:
                    server = PostgresServer().start()
                except Exception as exc:  # whatever the starter raises, one line is enough
                    raise BenchError(f"could not start PostgreSQL: {exc}") from exc
                console.print(f"PostgreSQL: a private server on port {server.port}")
            postmaster = server.postmaster_pid() if server is not None else None
            for n, spec in enumerate(specs):
                url = store_url_for(spec.store, spec, work, server, store_url, n)
                try:
                    record, extra = run(spec, broker, work, url, load, opts, postmaster)
                except (BenchError, StoreUrlError) as exc:
                    console.print(f"[red]{spec}: {exc}[/]")
                    failures.append(f"{spec.store} x{spec.replicas}: {exc}"[:300])
                    continue
                records.append(record)
                details.append({**record, **extra})
        finally:
            broker.stop()
            if server is not None:
                server.stop()
    if records:
        print_table(records, details, load)
    save("cloud_ingest", {"copies": copies, "batch": BATCH, "runs": details,
                          "failures": failures})
    if json_path:
        json_path.write_text(json.dumps(records, indent=2) + "\n")
    if failures:
        raise BenchError("; ".join(failures))
    return records


def print_table(records: list[RunRecord], details: list[dict], load: Load) -> None:
    def base(store: str) -> float | None:
        for r in records:
            if r["store"] == store and r["replicas"] == 1 and not r["killed"]:
                return r["windows_per_s"]
        return None

    rows = []
    for r, d in zip(records, details, strict=True):
        one = base(r["store"])
        cpu = d["cpu_s"]
        rows.append([r["store"], r["replicas"], "yes" if r["killed"] else "",
                     r["windows_per_s"], d["ticks_per_s"], d["all_scored_s"],
                     f"{r['windows_per_s'] / one:.2f}x" if one else "",
                     r["ticks_lost"], r["ticks_duplicated"], r["windows_scored_twice"],
                     f"{cpu['replicas']:.0f}/{cpu['postgresql']:.0f}/{cpu['broker']:.0f}/"
                     f"{cpu['bench']:.0f}"])
    table(f"Cloud ingest + scoring through Mosquitto ({len(load.payloads)} batches of <= {BATCH} "
          f"ticks, {load.ticks} ticks, {load.windows} windows; 2 cores shared by broker, "
          "publisher, store and replicas)",
          ["store", "replicas", "killed", "windows scored/s", "ticks stored/s",
           "all scored after s", "vs 1 replica", "ticks lost", "ticks stored twice",
           "windows scored twice", "CPU s: replicas/PG/broker/publisher"], rows)
    for store in STORES:
        sizes = [d["store_bytes_per_tick"] for d in details if d["store"] == store]
        if sizes:
            per_tick = float(np.median(sizes))
            console.print(f"{store} store on disk: {per_tick:,.0f} bytes per tick stored (its "
                          f"window's prediction and the indexes included) = "
                          f"{per_tick * 86400 / 1e6:,.1f} MB per asset per day at 1 tick/s")
    sqlite_one, pg_one = base("sqlite"), base("postgresql")
    if sqlite_one and pg_one:
        ratio = pg_one / sqlite_one
        console.print(f"PostgreSQL / SQLite, one replica: {ratio:.2f}x (target >= 0.8x: "
                      f"{'met' if ratio >= 0.8 else 'missed'})")
    for store in STORES:
        one = base(store)
        two = next((r["windows_per_s"] for r in records if r["store"] == store
                    and r["replicas"] == 2 and not r["killed"]), None)
        if one and two:
            console.print(f"{store}, 2 replicas / 1: {two / one:.2f}x (target >= 1.5x: "
                          f"{'met' if two / one >= 1.5 else 'missed'})")
    for r in records:
        if r["killed"]:
            clean = not (r["ticks_lost"] or r["ticks_duplicated"] or r["windows_scored_twice"]
                         or r["windows_scored"] < r["windows_expected"])
            console.print(f"{r['store']} x{r['replicas']}, one replica killed: "
                          f"{r['ticks_lost']} lost, {r['ticks_duplicated']} stored twice, "
                          f"{r['windows_expected'] - r['windows_scored']} windows unscored, "
                          f"{r['windows_scored_twice']} scored twice (target all 0: "
                          f"{'met' if clean else 'missed'})")


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite",
                        type=lambda t: parse_list(t, STORES),
                        help="sqlite, postgresql, or both comma-separated (default sqlite)")
    parser.add_argument("--store-url", help="an existing PostgreSQL database (empty, "
                        "postgresql://user@host:port/db) instead of a private server")
    parser.add_argument("--replicas", default="1,2", type=lambda t: [int(n) for n in
                        parse_list(t)], help="replica counts to run, e.g. 1,2,3")
    parser.add_argument("--kill-replica-after", type=float, metavar="SECONDS",
                        help="SIGKILL one replica this long into every run")
    parser.add_argument("--restart-after", type=float, default=5.0, metavar="SECONDS",
                        help="start the killed replica again this long after (-1: never; its "
                        "in-flight messages then stay with its broker session)")
    parser.add_argument("--copies", type=int, default=12, help="copies of the 100 test engines")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the runs here")
    parser.add_argument("--ready-timeout", type=float, default=600,
                        help="seconds the replicas may take to become ready")
    parser.add_argument("--run-timeout", type=float, default=600,
                        help="seconds a run may take to store and score everything")
    args = parser.parse_args(argv)
    if args.store_url and len(parse_list(args.store_url)) != 1:
        parser.error("--store-url takes one URL")
    if args.store_url and "postgresql" not in args.store:
        parser.error("--store-url is for --store postgresql")
    runs_on_url = sum(1 for s in args.store if s == "postgresql") * len(args.replicas)
    if args.store_url and runs_on_url > 1:
        parser.error("with --store-url run one replica count (each run needs an empty store)")
    opts = Options(restart_after=args.restart_after, ready_timeout=args.ready_timeout,
                   run_timeout=args.run_timeout)
    try:
        main(args.store, args.replicas, args.kill_replica_after, args.copies, args.store_url,
             args.json, opts, extra_killed_run=False)
    except BenchError as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
