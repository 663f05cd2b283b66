"""The agent as a separate process replaying N assets through a real Mosquitto.

Throughput: N = 10, 100, 1000 assets as fast as possible (every tick scored), ticks per second
of wall time and per CPU-second, peak resident memory. Latency: 100 assets at 10 ticks/s each,
tick arrival -> alert published, from the `latency_ms` the alert events carry.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import yaml

from bench.common import BUNDLE, BUNDLE_KEY, DATA, REPO, save, table
from contract import codec, topics
from contract.payloads import AlertEvent
from tests.support.broker import Mosquitto

GW = "gw-bench"


class PeakRss(threading.Thread):
    """The agent's resident high-water mark since exec (VmHWM), polled while it runs.
    (ru_maxrss from wait4 would include the pages of the forking parent, which may hold
    TensorFlow from an earlier bench in the same process.)"""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path, self.mb, self.done = Path(f"/proc/{pid}/status"), 0.0, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.wait(0.05):
            try:
                for line in self.path.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.mb = max(self.mb, int(line.split()[1]) / 1024)
            except (OSError, ValueError, IndexError):
                pass

    def stop(self) -> None:
        self.done.set()
        self.join()


def run_agent(broker: Mosquitto, work: Path, assets: int, rate: float) -> dict:
    copies = max(1, assets // 100)
    units = list(range(1, min(assets, 100) + 1))
    cfg = {
        "gateway_id": GW, "broker": {"host": broker.host, "port": broker.port},
        "sources": [{"type": "cmapss", "file": str(DATA / "test_FD001.txt"), "units": units,
                     "rate": rate, "asset_prefix": f"c{c}-e"} for c in range(copies)],
        "bundle": {"path": str(BUNDLE), "trusted_keys": [str(BUNDLE_KEY)]},
        "outbox": {"path": str(work / f"outbox-{assets}-{rate}.db")},
        "log": {"level": "WARNING"},
    }
    config = work / f"agent-{assets}-{rate}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    lengths = np.unique(np.loadtxt(DATA / "test_FD001.txt", usecols=0), return_counts=True)[1]
    ticks = int(lengths[: len(units)].sum()) * copies
    events: list[AlertEvent] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: events.append(codec.decode_json(m.payload, AlertEvent))
    sub.connect(broker.host, broker.port)
    sub.subscribe(topics.subscription("alert", GW), qos=1)
    sub.loop_start()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config", str(config),
                             "--exit-when-drained"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    peak = PeakRss(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    peak.stop()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(proc.stderr.read().decode()[-2000:])
    time.sleep(0.5)
    sub.loop_stop()
    cpu = usage.ru_utime + usage.ru_stime
    lat = np.array([e.latency_ms for e in events if e.latency_ms is not None])
    return {"assets": copies * len(units), "rate": rate, "ticks": ticks, "wall_s": wall,
            "cpu_s": cpu, "ticks_per_s": ticks / wall, "ticks_per_cpu_s": ticks / cpu,
            "peak_rss_mb": peak.mb, "alerts": len(events),
            "alert_latency_median_ms": float(np.median(lat)) if len(lat) else None,
            "alert_latency_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None}


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker").start()
        try:
            runs = [run_agent(broker, work, n, 0) for n in (10, 100, 1000)]
            runs.append(run_agent(broker, work, 100, 10))
        finally:
            broker.stop()

    def ms(v):
        return "-" if v is None else f"{v:.1f}"

    table("Edge agent pipeline through Mosquitto (startup included in wall time)",
          ["assets", "rate/asset", "ticks", "ticks/s", "ticks/CPU-s", "peak RSS MB", "alerts",
           "alert latency median ms", "p99 ms"],
          [[r["assets"], "max" if r["rate"] == 0 else f"{r['rate']:g}/s", r["ticks"],
            r["ticks_per_s"], r["ticks_per_cpu_s"], r["peak_rss_mb"], r["alerts"],
            ms(r["alert_latency_median_ms"]), ms(r["alert_latency_p99_ms"])] for r in runs])
    save("edge_pipeline", {"runs": runs})
    return {"runs": runs}


if __name__ == "__main__":
    main()
