"""The whole system as separate processes: broker(s), cloud service, edge agent."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from tests.support.broker import Mosquitto, free_port

REPO = Path(__file__).resolve().parents[2]
TOKEN = "system-test-token-0123456789"


class System:
    """An edge agent replaying C-MAPSS units into `replicas` cloud processes that share one
    store (`store`: the cloud config's store section; default a SQLite file in `work`)."""

    def __init__(self, work: Path, broker: Mosquitto, bundle: Path, bundle_key: Path,
                 data: Path, units: list[int], rate: float, gateway: str = "gw-sys",
                 uplink: Mosquitto | None = None, replicas: int = 1,
                 store: dict | None = None, cloud_extra: dict | None = None) -> None:
        self.work, self.broker, self.gateway = work, broker, gateway
        self.uplink = uplink or broker
        self.units, self.data = units, data
        self.http_ports = [free_port() for _ in range(replicas)]
        self.apis = [f"http://127.0.0.1:{port}" for port in self.http_ports]
        self.api = self.apis[0]
        self.http_port = self.http_ports[0]
        self.cloud_cfgs = [work / f"cloud-{i}.yaml" for i in range(replicas)]
        self.cloud_cfg = self.cloud_cfgs[0]
        for i, path in enumerate(self.cloud_cfgs):
            cfg = {
                "broker": {"host": self.uplink.host, "port": self.uplink.port},
                "client_id": "pdm-cloud-systest" if replicas == 1 else f"pdm-cloud-r{i}",
                "api_token": TOKEN,
                "store": store or {"url": f"sqlite:///{work / 'cloud.db'}"},
                "registry": {"path": str(work / "registry")},
                "bundle": {"path": str(bundle), "trusted_keys": [str(bundle_key)]},
                "http": {"host": "127.0.0.1", "port": self.http_ports[i]},
                "log": {"level": "INFO" if replicas > 1 else "WARNING"}}
            for section, values in (cloud_extra or {}).items():
                cfg[section] = {**cfg.get(section, {}), **values}
            path.write_text(yaml.safe_dump(cfg))
        agent = {
            "gateway_id": gateway, "broker": {"host": broker.host, "port": broker.port},
            "sources": [{"type": "cmapss", "file": str(data), "units": units, "rate": rate}],
            "bundle": {"path": str(bundle), "trusted_keys": [str(bundle_key)]},
            "outbox": {"path": str(work / "outbox.db"), "batch_max_age": 0.2}}
        if uplink is not None:
            agent["uplink"] = {"host": uplink.host, "port": uplink.port}
        self.agent_cfg = work / "agent.yaml"
        self.agent_cfg.write_text(yaml.safe_dump(agent))
        self.clouds: list[subprocess.Popen | None] = [None] * replicas
        self.agent: subprocess.Popen | None = None
        self.logs: list[Path] = []

    @property
    def cloud(self) -> subprocess.Popen | None:
        return self.clouds[0]

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = self.work / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO,
                                stdout=log.open("w"), stderr=subprocess.STDOUT)

    def start_cloud(self, replica: int = 0, timeout: float = 120) -> None:
        proc = self.clouds[replica] = self._spawn(
            f"cloud{replica}", ["cloud_service", "run", "--config",
                                str(self.cloud_cfgs[replica])])
        log = self.logs[-1]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"cloud exited: {log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{self.apis[replica]}/healthz", timeout=2)
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("cloud did not serve /healthz in time")

    def start_agent(self, *args: str) -> None:
        self.agent = self._spawn("agent", ["edge_agent", "run", "--config",
                                           str(self.agent_cfg), *args])

    @staticmethod
    def kill(proc: subprocess.Popen | None, sig: int = signal.SIGKILL) -> None:
        if proc and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        self.kill(self.agent, signal.SIGTERM)
        for proc in self.clouds:
            self.kill(proc, signal.SIGTERM)

    def get(self, path: str, replica: int = 0):
        req = urllib.request.Request(f"{self.apis[replica]}{path}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def pages(self, path: str, key: str = "after_seq") -> list[dict]:
        items, after = [], None
        while True:
            sep = "&" if "?" in path else "?"
            page = self.get(f"{path}{sep}limit=1000" + (f"&{key}={after}" if after is not None
                                                        else ""))
            items += page["items"]
            after = page.get("next_" + key)
            if after is None or not page["items"]:
                return items

    def ticks(self, asset: str) -> list[dict]:
        return self.pages(f"/api/v1/assets/{self.gateway}/{asset}/ticks")

    def predictions(self, asset: str) -> list[dict]:
        return self.pages(f"/api/v1/assets/{self.gateway}/{asset}/predictions")

    def metric(self, name: str, replica: int = 0) -> float:
        text = urllib.request.urlopen(f"{self.apis[replica]}/metrics",
                                      timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + " ") or line.startswith(name + "{"))
