"""The whole system on one machine: a private Mosquitto, the cloud service and an edge agent
replaying the NASA C-MAPSS FD001 test engines with the committed default bundle.

The broker runs the shipped config (deploy/docker/mosquitto: mutual TLS, the per-gateway
ACL) with a throwaway PKI made in the work folder: the cloud and the agent connect with their
own certificates, as in production.

    python scripts/demo.py [--duration SECONDS] [--rate TICKS_PER_S] [--units 31,34,68]
                           [--loop] [--store URL] [--replicas N]

The cloud keeps its store in a SQLite file in the demo's folder unless `--store` names another
(`postgresql://user@host:port/db`, password in PDM_CLOUD_STORE__PASSWORD). `--replicas N`
starts N cloud processes on the one broker: they split the uplink (shared subscription) and
share the store, each with its own API; a SQLite store is shared only on this host.

Prints where to look and a progress line every 5 s until the replay ends (each engine's data
runs out; with `--loop` the engines start again and the progress goes on), runs until Ctrl-C
(or --duration), then stops everything it started and reports what went through: the ticks the
edge produced, those the cloud stored, and the copies it received besides (the ticks of
escalated windows, sent ahead of their batch so the cloud can judge at once, and any resent).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cloud_service import pki  # noqa: E402
from tests.support.broker import Mosquitto, free_port  # noqa: E402
from tests.support.stores import StoreUrlError, store_section  # noqa: E402

GATEWAY = "gw-demo"


def port_or_free(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def scrape(url: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}; empty when the process is gone."""
    try:
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) ([-+0-9.eEinfNa]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def scrape_sum(urls: list[str]) -> dict[str, float]:
    """The replicas' series added up (counters of a fleet served by N processes); empty when
    none answers."""
    out: dict[str, float] = {}
    for url in urls:
        for key, value in scrape(url).items():
            out[key] = out.get(key, 0.0) + value
    return out


def total(metrics: dict[str, float], name: str) -> int:
    return int(sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{")))


def replay_lengths(data: Path, units: str) -> dict[int, int]:
    """Ticks the agent will replay per engine: one per cycle of each chosen engine."""
    chosen = None if units == "all" else {int(u) for u in units.split(",")}
    counts: dict[int, int] = {}
    for line in data.read_text().splitlines():
        if line.strip() and (chosen is None or int(line.split(maxsplit=1)[0]) in chosen):
            unit = int(line.split(maxsplit=1)[0])
            counts[unit] = counts.get(unit, 0) + 1
    return counts


def first_alert_after(agent_log: Path) -> float | None:
    """Seconds from the agent's start to its first alert, from the log's timestamps."""
    stamps: dict[str, float] = {}
    for line in agent_log.read_text(errors="replace").splitlines():
        m = re.match(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO edge_agent: "
                     r"(agent \S+ started|alert )", line)
        if m:
            kind = "start" if m.group(3).startswith("agent") else "alert"
            when = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
            stamps.setdefault(kind, when + int(m.group(2)) / 1000)
    if "start" in stamps and "alert" in stamps:
        return stamps["alert"] - stamps["start"]
    return None


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the cloud service exited; see {log}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s; see {log}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=0, help="seconds to run (0: until Ctrl-C)")
    ap.add_argument("--rate", type=float, default=10, help="ticks per second per engine")
    ap.add_argument("--loop", action="store_true",
                    help="start each engine again when its data ends, until stopped")
    ap.add_argument("--units", default="all", help="engines to replay: all, or e.g. 31,34,68")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "cmapss" / "test_FD001.txt")
    ap.add_argument("--workdir", type=Path, default=REPO / "var" / "demo")
    ap.add_argument("--store", metavar="URL",
                    help="the cloud's store (default: sqlite:///WORKDIR/cloud.db)")
    ap.add_argument("--replicas", type=int, default=1, metavar="N",
                    help="cloud processes sharing the uplink and the store (default 1)")
    args = ap.parse_args()
    if args.replicas < 1:
        ap.error("--replicas must be at least 1")
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        raise SystemExit("the demo needs Mosquitto: sudo apt-get install -y mosquitto")

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    py = sys.executable
    store_url = args.store or f"sqlite:///{work.resolve() / 'cloud.db'}"
    try:
        store = store_section(store_url)
    except StoreUrlError as exc:
        raise SystemExit(f"--store: {exc}") from None
    procs: list[subprocess.Popen] = []
    # A throwaway PKI: CA, broker, cloud and this gateway's certificates, only for this run.
    certs = pki.init_pki(work / "pki")
    gateway_id = pki.issue_gateway(certs.folder, GATEWAY)
    broker = Mosquitto(work / "broker", port=port_or_free(8883), shipped_pki=certs.folder).start()

    def tls(identity: pki.Identity) -> dict:
        return {"enabled": True, "ca_file": str(certs.ca.cert), "cert_file": str(identity.cert),
                "key_file": str(identity.key)}

    try:
        http_ports = [port_or_free(8000)] + [free_port() for _ in range(args.replicas - 1)]
        agent_metrics = free_port()
        token = secrets.token_urlsafe(24)
        cloud_cfgs, cloud_logs = [], []
        for i, http_port in enumerate(http_ports):
            # One client id per replica, stable across restarts; one registry folder, so a
            # bundle uploaded through any replica can be downloaded through all.
            suffix = "" if args.replicas == 1 else f"-{i + 1}"
            cloud_cfgs.append(work / f"cloud{suffix}.yaml")
            cloud_logs.append(work / f"cloud{suffix}.log")
            cloud_cfgs[-1].write_text(yaml.safe_dump({
                "broker": {"host": broker.host, "port": broker.port, "tls": tls(certs.cloud)},
                "client_id": f"pdm-cloud-demo{suffix}", "api_token": token, "store": store,
                "registry": {"path": str(work / "bundles")},
                "bundle": {"path": str(REPO / "models/default"),
                           "trusted_keys": [str(REPO / "models/default_signing_key.pub")]},
                "http": {"host": "127.0.0.1", "port": http_port}}))
        lengths = replay_lengths(args.data, args.units)
        expected = sum(lengths.values())
        units = "all" if args.units == "all" else [int(u) for u in args.units.split(",")]
        agent_cfg = work / "agent.yaml"
        agent_cfg.write_text(yaml.safe_dump({
            "gateway_id": GATEWAY,
            "broker": {"host": broker.host, "port": broker.port, "tls": tls(gateway_id)},
            "sources": [{"type": "cmapss", "file": str(args.data), "units": units,
                         "rate": args.rate, "loop": args.loop}],
            "bundle": {"path": str(REPO / "models/default"),
                       "trusted_keys": [str(REPO / "models/default_signing_key.pub")]},
            "outbox": {"path": str(work / "outbox.db")}, "metrics_port": agent_metrics}))

        what = "the cloud service" if args.replicas == 1 else f"{args.replicas} cloud replicas"
        print(f"starting {what} (store {store_url.split('://', 1)[0]}, log: "
              f"{', '.join(map(str, cloud_logs))}) ...", flush=True)
        for cfg, log in zip(cloud_cfgs, cloud_logs, strict=True):
            procs.append(subprocess.Popen([py, "-m", "cloud_service", "run", "--config",
                                           str(cfg)], cwd=REPO, stdout=log.open("w"),
                                          stderr=subprocess.STDOUT))
        apis = [f"http://127.0.0.1:{port}" for port in http_ports]
        for api, proc, log in zip(apis, procs, cloud_logs, strict=True):
            wait_http(f"{api}/readyz", proc, log)
        api = apis[0]
        agent_log = work / "agent.log"
        procs.append(subprocess.Popen([py, "-m", "edge_agent", "run", "--config",
                                       str(agent_cfg)], cwd=REPO, stdout=agent_log.open("w"),
                                      stderr=subprocess.STDOUT))
        # The gateway's own identity: the ACL shows it its own alerts, nobody else's.
        sub_tls = (f"--cafile {certs.ca.cert} --cert {gateway_id.cert} "
                   f"--key {gateway_id.key}")
        cloud_metrics = [f"{a}/metrics" for a in apis]
        edge_metrics = f"http://127.0.0.1:{agent_metrics}/metrics"
        # The replay sends one cycle per engine per 1/rate s, the engines side by side.
        replay_s = max(lengths.values(), default=0) / args.rate if args.rate else 0.0
        span = "a lap" if args.loop else "in all"
        replicas = ("" if args.replicas == 1 else f"\n  other replicas' APIs:   "
                    f"{'  '.join(apis[1:])}  (each serves the whole fleet)")
        print(f"""
The demo runs: broker 127.0.0.1:{broker.port} (mutual TLS and the shipped ACL; certificates
in {certs.folder}), cloud API {api}, edge agent '{GATEWAY}' replaying FD001 test engines at
{args.rate:g} ticks/s each ({expected} ticks {span}, about {replay_s:.0f} s). Alerts begin
when an engine nears its end of life: with every engine at 10 ticks/s the first came about
12 s in here; the summary gives this run's figure.

  alerts as they happen:  mosquitto_sub -h 127.0.0.1 -p {broker.port} -v {sub_tls} \\
                            -t 'pdm/v1/{GATEWAY}/+/alert' -t 'pdm/v1/{GATEWAY}/+/cloud-alert'
  live table of states:   {py} -m edge_agent alerts --host 127.0.0.1 --port {broker.port} \\
                            {sub_tls}
  edge metrics:           {edge_metrics}
  cloud metrics:          {'  '.join(cloud_metrics)}
  web UI:                 {api}/   (sign in with the token below to acknowledge alerts)
  API docs:               {api}/docs   (write routes need: Authorization: Bearer {token})
  fleet now:              curl -s {api}/api/v1/assets{replicas}
  logs:                   {agent_log}  {'  '.join(map(str, cloud_logs))}

Ctrl-C stops everything.""", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        end = time.monotonic() + args.duration if args.duration else None
        edge, cloud = {}, {}
        replaying = True
        try:
            while end is None or time.monotonic() < end:
                time.sleep(5 if end is None else min(5, max(0.1, end - time.monotonic())))
                for p in procs:
                    if p.poll() is not None:
                        raise SystemExit(f"a process exited early (code {p.returncode}); "
                                         f"see {agent_log} and {work}/cloud*.log")
                edge = scrape(edge_metrics) or edge
                cloud = scrape_sum(cloud_metrics) or cloud
                if not replaying:
                    continue
                ticks = total(edge, "pdm_edge_ticks_total")
                progress = (f"{ticks} (lap {ticks // max(expected, 1) + 1})" if args.loop
                            else f"{ticks}/{expected}")
                print(f"  ticks {progress}, edge alerts "
                      f"{total(edge, 'pdm_edge_alerts_total')}, cloud windows scored "
                      f"{total(cloud, 'pdm_cloud_windows_scored_total')}, cloud alerts "
                      f"{total(cloud, 'pdm_cloud_alerts_total')}", flush=True)
                stored = total(cloud, 'pdm_cloud_rows_inserted_total{table="ticks"}')
                if not args.loop and ticks >= expected and stored >= ticks:
                    replaying = False
                    then = "Ctrl-C stops everything" if end is None else "running on to --duration"
                    print(f"  the replay has ended: all {ticks} ticks are in the cloud's store; "
                          f"{then}", flush=True)
        except KeyboardInterrupt:
            pass
        edge = scrape(edge_metrics) or edge
        cloud = scrape_sum(cloud_metrics) or cloud
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.stop()
    e, c = (lambda n: total(edge, n)), (lambda n: total(cloud, n))
    print("\nSummary")
    print(f"  edge:  {e('pdm_edge_ticks_total')} ticks, {e('pdm_edge_windows_scored_total')} "
          f"windows scored, {e('pdm_edge_alerts_total')} alerts, "
          f"{e('pdm_edge_rejected_readings_total')} readings rejected")
    received, stored = c('pdm_cloud_ticks_received_total'), total(
        cloud, 'pdm_cloud_rows_inserted_total{table="ticks"}')
    copies, ahead = c('pdm_cloud_duplicate_ticks_total'), c('pdm_cloud_escalated_ticks_total')
    print(f"  cloud: {stored} ticks stored, {c('pdm_cloud_windows_scored_total')} windows "
          f"scored, {c('pdm_cloud_alerts_total')} alerts, {c('pdm_cloud_dead_letters_total')} "
          f"dead letters")
    # Every tick is stored once; what the cloud receives beyond that are copies: the ticks of
    # escalated windows, sent ahead of their batch so the cloud can judge the window at once,
    # and batches resent after a lost acknowledgement or replayed after a reconnect.
    print(f"  uplink: {received} ticks received = {stored} stored + {copies} copies "
          f"({ahead} in escalated windows sent ahead of their batch, "
          f"{max(copies - ahead, 0)} resent or replayed); "
          f"{max(e('pdm_edge_ticks_total') - stored, 0)} not in the cloud yet when it stopped "
          f"(they stay in the edge's outbox)")
    esc, scored = e('pdm_edge_escalations_total'), e('pdm_edge_windows_scored_total')
    verdicts = e('pdm_edge_cloud_verdicts_total')
    overruled = total(edge, 'pdm_edge_cloud_verdicts_total{outcome="overruled"}')
    print(f"  escalation: {esc} windows sent for a cloud verdict "
          f"({esc / max(scored, 1):.2%} of those scored), {verdicts} verdicts back, "
          f"{overruled} overruled the edge ({overruled / max(verdicts, 1):.1%})")
    if verdicts:
        mean = edge.get("pdm_edge_verdict_latency_seconds_sum", 0.0) / verdicts
        print(f"  verdicts came back in {mean * 1000:.0f} ms on average")
    on_cloud = total(edge, 'pdm_edge_escalated_decisions_total{basis="cloud"}')
    on_edge = total(edge, 'pdm_edge_escalated_decisions_total{basis="edge"}')
    if on_cloud or on_edge:
        print(f"  adopted: {on_cloud} escalated windows decided on the cloud's verdict, "
              f"{on_edge} on the edge's own score (no verdict within the deadline)")
    first = first_alert_after(agent_log)
    if first is not None:
        print(f"  the first edge alert came {first:.1f} s after the agent started")
    print(f"  files: {work}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
