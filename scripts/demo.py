"""The whole system on one machine: a private Mosquitto, the cloud service and an edge agent
replaying the NASA C-MAPSS FD001 test engines with the committed default bundle.

The broker runs the shipped config (deploy/docker/mosquitto: mutual TLS, the per-gateway
ACL) with a throwaway PKI made in the work folder: the cloud and the agent connect with their
own certificates, as in production.

    python scripts/demo.py [--duration SECONDS] [--rate TICKS_PER_S] [--units 31,34,68]

Prints where to look, runs until Ctrl-C (or --duration), then stops everything it started and
reports what went through.
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


def total(metrics: dict[str, float], name: str) -> int:
    return int(sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{")))


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
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
    ap.add_argument("--units", default="all", help="engines to replay: all, or e.g. 31,34,68")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "cmapss" / "test_FD001.txt")
    ap.add_argument("--workdir", type=Path, default=REPO / "var" / "demo")
    args = ap.parse_args()
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        raise SystemExit("the demo needs Mosquitto: sudo apt-get install -y mosquitto")

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    py = sys.executable
    procs: list[subprocess.Popen] = []
    # A throwaway PKI: CA, broker, cloud and this gateway's certificates, only for this run.
    certs = pki.init_pki(work / "pki")
    gateway_id = pki.issue_gateway(certs.folder, GATEWAY)
    broker = Mosquitto(work / "broker", port=port_or_free(8883), shipped_pki=certs.folder).start()

    def tls(identity: pki.Identity) -> dict:
        return {"enabled": True, "ca_file": str(certs.ca.cert), "cert_file": str(identity.cert),
                "key_file": str(identity.key)}

    try:
        http_port, agent_metrics = port_or_free(8000), free_port()
        token = secrets.token_urlsafe(24)
        cloud_cfg = work / "cloud.yaml"
        cloud_cfg.write_text(yaml.safe_dump({
            "broker": {"host": broker.host, "port": broker.port, "tls": tls(certs.cloud)},
            "client_id": "pdm-cloud-demo", "api_token": token,
            "store": {"url": f"sqlite:///{work / 'cloud.db'}"},
            "registry": {"path": str(work / "bundles")},
            "bundle": {"path": str(REPO / "models/default"),
                       "trusted_keys": [str(REPO / "models/default_signing_key.pub")]},
            "http": {"host": "127.0.0.1", "port": http_port}}))
        units = "all" if args.units == "all" else [int(u) for u in args.units.split(",")]
        agent_cfg = work / "agent.yaml"
        agent_cfg.write_text(yaml.safe_dump({
            "gateway_id": GATEWAY,
            "broker": {"host": broker.host, "port": broker.port, "tls": tls(gateway_id)},
            "sources": [{"type": "cmapss", "file": str(args.data), "units": units,
                         "rate": args.rate}],
            "bundle": {"path": str(REPO / "models/default"),
                       "trusted_keys": [str(REPO / "models/default_signing_key.pub")]},
            "outbox": {"path": str(work / "outbox.db")}, "metrics_port": agent_metrics}))

        cloud_log = work / "cloud.log"
        print(f"starting the cloud service (log: {cloud_log}) ...", flush=True)
        procs.append(subprocess.Popen([py, "-m", "cloud_service", "run", "--config",
                                       str(cloud_cfg)], cwd=REPO, stdout=cloud_log.open("w"),
                                      stderr=subprocess.STDOUT))
        api = f"http://127.0.0.1:{http_port}"
        wait_http(f"{api}/readyz", procs[0], cloud_log)
        agent_log = work / "agent.log"
        procs.append(subprocess.Popen([py, "-m", "edge_agent", "run", "--config",
                                       str(agent_cfg)], cwd=REPO, stdout=agent_log.open("w"),
                                      stderr=subprocess.STDOUT))
        # The gateway's own identity: the ACL shows it its own alerts, nobody else's.
        sub_tls = (f"--cafile {certs.ca.cert} --cert {gateway_id.cert} "
                   f"--key {gateway_id.key}")
        print(f"""
The demo runs: broker 127.0.0.1:{broker.port} (mutual TLS and the shipped ACL; certificates
in {certs.folder}), cloud API {api}, edge agent '{GATEWAY}' replaying FD001 test engines at
{args.rate:g} ticks/s each. Alerts begin within a minute.

  alerts as they happen:  mosquitto_sub -h 127.0.0.1 -p {broker.port} -v {sub_tls} \\
                            -t 'pdm/v1/{GATEWAY}/+/alert' -t 'pdm/v1/{GATEWAY}/+/cloud-alert'
  live table of states:   {py} -m edge_agent alerts --host 127.0.0.1 --port {broker.port} \\
                            {sub_tls}
  API docs:               {api}/docs   (write routes need: Authorization: Bearer {token})
  fleet now:              curl -s {api}/api/v1/assets
  logs:                   {agent_log}  {cloud_log}

Ctrl-C stops everything.""", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        end = time.monotonic() + args.duration if args.duration else None
        edge, cloud = {}, {}
        try:
            while end is None or time.monotonic() < end:
                time.sleep(5 if end is None else min(5, max(0.1, end - time.monotonic())))
                for p in procs:
                    if p.poll() is not None:
                        raise SystemExit(f"a process exited early (code {p.returncode}); "
                                         f"see {agent_log} and {cloud_log}")
                edge = scrape(f"http://127.0.0.1:{agent_metrics}/metrics") or edge
                cloud = scrape(f"{api}/metrics") or cloud
                print(f"  ticks {total(edge, 'pdm_edge_ticks_total')}, edge alerts "
                      f"{total(edge, 'pdm_edge_alerts_total')}, cloud windows scored "
                      f"{total(cloud, 'pdm_cloud_windows_scored_total')}, cloud alerts "
                      f"{total(cloud, 'pdm_cloud_alerts_total')}", flush=True)
        except KeyboardInterrupt:
            pass
        edge = scrape(f"http://127.0.0.1:{agent_metrics}/metrics") or edge
        cloud = scrape(f"{api}/metrics") or cloud
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
    print(f"  cloud: {c('pdm_cloud_ticks_received_total')} ticks received, "
          f"{c('pdm_cloud_windows_scored_total')} windows scored, {c('pdm_cloud_alerts_total')} "
          f"alerts, {c('pdm_cloud_dead_letters_total')} dead letters")
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
    print(f"  files: {work}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
