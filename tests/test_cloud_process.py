"""`python -m cloud_service` as a process: the CLI, and a SIGKILL in the middle of a stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml

from contract import codec, topics
from contract.payloads import UplinkBatch
from tests.support.broker import free_port
from tests.support.cloud import make_bundle

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789"
FEATURES = ("s1", "s2", "s3", "s4")
W = 10


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    return make_bundle(root / "proc-1", root / "keys", version="proc-1", window=W,
                       features=FEATURES)


def write_config(tmp_path: Path, broker, bundle, **extra) -> tuple[Path, int]:
    port = free_port()
    doc = {
        "broker": {"host": broker.host, "port": broker.port, "reconnect_min_delay": 0.2,
                   "reconnect_max_delay": 1},
        "client_id": f"cloud-proc-{uuid.uuid4().hex[:6]}",
        "store": {"url": f"sqlite:///{tmp_path / 'cloud.db'}"},
        "bundle": {"path": str(bundle[0]), "trusted_keys": [str(bundle[1])]},
        "registry": {"path": str(tmp_path / "bundles")},
        "api_token": TOKEN,
        "http": {"host": "127.0.0.1", "port": port},
        **extra,
    }
    path = tmp_path / "cloud.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, port


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cloud_service", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def start(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cloud_service", "run", "--config",
                             str(config)], cwd=REPO, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT)


def wait_ready(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"service exited ({proc.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"service not ready within {timeout}s:\n{log.read_text()}")


def test_check_config_prints_the_effective_config_with_secrets_masked(tmp_path, broker, bundle):
    config, _ = write_config(tmp_path, broker, bundle)
    out = cli("check-config", str(config), env={"PDM_CLOUD_SCORING__BATCH_MAX": "64"})
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["scoring"]["batch_max"] == 64 and doc["share_group"] == "cloud"
    assert TOKEN not in out.stdout and doc["api_token"] == "**********"
    config.write_text(config.read_text() + "scoring: {batch_max: -1, speed: 3}\n")
    bad = cli("check-config", str(config))
    assert bad.returncode == 2
    assert "scoring.batch_max" in bad.stderr and "scoring.speed: unknown key" in bad.stderr


def batches(asset: str, n: int, size: int) -> list[UplinkBatch]:
    rng = np.random.default_rng(abs(hash(asset)) % 2**32)
    out = []
    for first in range(0, n, size):
        k = min(size, n - first)
        out.append(UplinkBatch(
            gateway="gw-k", asset=asset, first_seq=first,
            timestamps=1_800_000_000.0 + np.arange(first, first + k),
            features=FEATURES, values=rng.normal(0, 0.3, (k, 4)).astype(np.float32),
            probability=np.full(k, 0.4, np.float32), rul=np.full(k, 60.0, np.float32),
            model_version="edge-1"))
    return out


def test_sigkill_mid_stream_loses_no_tick(tmp_path, broker, bundle):
    config, port = write_config(tmp_path, broker, bundle)
    log = tmp_path / "service.log"
    proc = start(config, log)
    api = f"http://127.0.0.1:{port}/api/v1"
    assets = {"e1": 700, "e2": 500, "e3": 300}
    try:
        wait_ready(port, proc, log)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub-kill",
                          protocol=mqtt.MQTTv5)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        plan = [b for a, n in assets.items() for b in batches(a, n, 5)]
        plan.sort(key=lambda b: b.first_seq)  # interleave the assets
        sent = threading.Event()

        def publish_all() -> None:
            for b in plan:
                pub.publish(topics.uplink("gw-k"), codec.encode_uplink(b), qos=1)
                time.sleep(0.004)
            sent.set()

        thread = threading.Thread(target=publish_all, daemon=True)
        thread.start()

        def stored() -> int:
            try:
                rows = httpx.get(f"{api}/assets", timeout=2).json()
            except httpx.HTTPError:
                return -1
            return sum(r["ticks"] for r in rows)

        deadline = time.monotonic() + 30
        while stored() < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        before = stored()
        assert 0 < before < sum(assets.values()), before
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert sent.wait(30)
        pub.loop_stop()
        pub.disconnect()
        thread.join(5)
        # The broker kept our persistent session's share; the restarted service resumes it.
        proc = start(config, log)
        wait_ready(port, proc, log)
        deadline = time.monotonic() + 60
        while stored() < sum(assets.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for asset, n in assets.items():
            seqs = []
            after = -1
            while True:
                page = httpx.get(f"{api}/assets/gw-k/{asset}/ticks",
                                 params={"after_seq": after, "limit": 1000}).json()
                seqs += [t["seq"] for t in page["items"]]
                if page["next_after_seq"] is None:
                    break
                after = page["next_after_seq"]
            assert seqs == list(range(n)), f"{asset}: {len(seqs)} of {n} ticks, gaps or extras"
        # And every complete window is scored, including those whose ticks arrived just before
        # the kill.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = {r["asset"]: r for r in httpx.get(f"{api}/assets").json()}
            if all(rows[a]["scored_seq"] == n - 1 for a, n in assets.items()):
                break
            time.sleep(0.1)
        for asset, n in assets.items():
            page = httpx.get(f"{api}/assets/gw-k/{asset}/predictions",
                             params={"limit": 1000}).json()
            assert [p["seq"] for p in page["items"]] == list(range(W - 1, n))
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "pdm_cloud_scoring_backlog 0.0" in metrics
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert "Traceback" not in log.read_text()


def test_an_unusable_bundle_refuses_the_start_in_one_line(tmp_path, broker, bundle):
    config, _ = write_config(tmp_path, broker, (tmp_path / "no-such-bundle", bundle[1]))
    run = cli("run", "--config", str(config))
    assert run.returncode == 4, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bundle: ")
    assert "no-such-bundle" in lines[0] and "bundle.wait" in lines[0]
    assert not (tmp_path / "cloud.db").exists()  # refused before anything was created


def test_bundle_wait_serves_not_ready_until_a_bundle_is_usable(tmp_path, broker, bundle):
    config, port = write_config(tmp_path, broker, (tmp_path / "no-such-bundle", bundle[1]))
    doc = yaml.safe_load(config.read_text())
    doc["bundle"]["wait"] = True
    config.write_text(yaml.safe_dump(doc))
    log = tmp_path / "cloud.log"
    proc = start(config, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 503
    finally:
        proc.terminate()
        proc.wait(timeout=30)
