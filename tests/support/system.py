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
    def __init__(self, work: Path, broker: Mosquitto, bundle: Path, bundle_key: Path,
                 data: Path, units: list[int], rate: float, gateway: str = "gw-sys",
                 uplink: Mosquitto | None = None) -> None:
        self.work, self.broker, self.gateway = work, broker, gateway
        self.uplink = uplink or broker
        self.units, self.data = units, data
        self.http_port = free_port()
        self.api = f"http://127.0.0.1:{self.http_port}"
        self.cloud_cfg = work / "cloud.yaml"
        self.cloud_cfg.write_text(yaml.safe_dump({
            "broker": {"host": self.uplink.host, "port": self.uplink.port},
            "client_id": "pdm-cloud-systest", "api_token": TOKEN,
            "store": {"url": f"sqlite:///{work / 'cloud.db'}"},
            "registry": {"path": str(work / "registry")},
            "bundle": {"path": str(bundle), "trusted_keys": [str(bundle_key)]},
            "http": {"host": "127.0.0.1", "port": self.http_port},
            "log": {"level": "WARNING"}}))
        agent = {
            "gateway_id": gateway, "broker": {"host": broker.host, "port": broker.port},
            "sources": [{"type": "cmapss", "file": str(data), "units": units, "rate": rate}],
            "bundle": {"path": str(bundle), "trusted_keys": [str(bundle_key)]},
            "outbox": {"path": str(work / "outbox.db"), "batch_max_age": 0.2}}
        if uplink is not None:
            agent["uplink"] = {"host": uplink.host, "port": uplink.port}
        self.agent_cfg = work / "agent.yaml"
        self.agent_cfg.write_text(yaml.safe_dump(agent))
        self.cloud: subprocess.Popen | None = None
        self.agent: subprocess.Popen | None = None
        self.logs: list[Path] = []

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = self.work / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO,
                                stdout=log.open("w"), stderr=subprocess.STDOUT)

    def start_cloud(self, timeout: float = 120) -> None:
        self.cloud = self._spawn("cloud", ["cloud_service", "run", "--config",
                                           str(self.cloud_cfg)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cloud.poll() is not None:
                raise RuntimeError(f"cloud exited: {self.logs[-1].read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{self.api}/healthz", timeout=2)
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
        self.kill(self.cloud, signal.SIGTERM)

    def get(self, path: str):
        req = urllib.request.Request(f"{self.api}{path}",
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

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"{self.api}/metrics", timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + " ") or line.startswith(name + "{"))
