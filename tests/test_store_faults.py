"""The service on a PostgreSQL store that goes away: at start (one clear line, non-zero exit)
and while running (uplink keeps arriving, nothing is acknowledged before its commit, readiness
goes false and comes back by itself, the failures are counted in /metrics)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.support.broker import free_port
from tests.support.postgres import PostgresServer, postgres_bindir
from tests.test_cloud_service import (  # noqa: F401  (bundle and publisher are fixtures)
    TOKEN,
    Running,
    bundle,
    cloud_config,
    publisher,
    send_batches,
    wait_until,
)


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_an_unreachable_store_stops_the_service_with_one_line(tmp_path, bundle):  # noqa: F811
    port = free_port()
    config = tmp_path / "cloud.yaml"
    config.write_text(yaml.safe_dump({
        "store": {"url": f"postgresql://pdm@127.0.0.1:{port}/fleet", "connect_timeout": 1,
                  "retry_min_delay": 0.2},
        "bundle": {"path": str(bundle[0]), "trusted_keys": [str(bundle[1])]},
        "registry": {"path": str(tmp_path / "bundles")}, "api_token": TOKEN}))
    env = {**os.environ, "PDM_CLOUD_STORE__PASSWORD": "never-shown-pw",
           "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "cloud_service", "run", "--config", str(config)],
                         env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 3, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("store:")]
    assert len(lines) == 1, run.stderr
    assert f"PostgreSQL database 'fleet' on 127.0.0.1:{port} as pdm" in lines[0]
    assert "never-shown-pw" not in run.stderr + run.stdout
    shown = subprocess.run([sys.executable, "-m", "cloud_service", "check-config", str(config)],
                           env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert shown.returncode == 0 and "never-shown-pw" not in shown.stdout
    assert f"postgresql://pdm@127.0.0.1:{port}/fleet" in shown.stdout


def test_a_database_outage_loses_nothing_and_readiness_recovers(tmp_path, broker, bundle,  # noqa: F811
                                                                 publisher):  # noqa: F811
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="pdm-pg-outage-"))).start()
    cloud = None
    try:
        url = server.create_database("fleet")
        cfg = cloud_config(tmp_path, broker, bundle[0], bundle[1],
                           store={"url": url, "pool_timeout": 2})
        cloud = Running(cfg)
        send_batches(publisher, "gw-pg", "e1", 100, size=10)
        wait_until(lambda: cloud.service.store.asset("gw-pg", "e1") is not None
                   and cloud.service.store.asset("gw-pg", "e1")["ticks"] == 100, 30,
                   "the first ticks stored")

        server.stop("immediate")  # the database crashes while uplink keeps coming
        send_batches(publisher, "gw-pg", "e2", 100, size=10)
        wait_until(lambda: cloud.http.get("/readyz").status_code == 503, 30, "not ready")
        reasons = cloud.http.get("/readyz").json()["reasons"]
        assert any("PostgreSQL database 'fleet' on 127.0.0.1" in r for r in reasons), reasons
        wait_until(lambda: metric(cloud.http.get("/metrics").text,
                                  'pdm_cloud_store_errors_total{caller="ingest"}') >= 1, 30,
                   "the failed commit counted")
        assert "pdm_cloud_store_up 0.0" in cloud.http.get("/metrics").text

        server.start()  # back: nothing to do but wait
        wait_until(lambda: cloud.http.get("/readyz").status_code == 200, 60, "ready again")
        store = cloud.service.store
        wait_until(lambda: store.asset("gw-pg", "e2") is not None
                   and store.asset("gw-pg", "e2")["ticks"] == 100, 60, "the held ticks stored")
        for asset in ("e1", "e2"):
            seqs = [t["seq"] for t in store.ticks("gw-pg", asset, -1, None, None, None, 1000)]
            assert seqs == list(range(100)), asset
        # every complete window of both assets scored once
        wait_until(lambda: len(store.predictions("gw-pg", "e2", -1, None, 1000)) == 91, 60,
                   "the held windows scored")
        assert len(store.predictions("gw-pg", "e1", -1, None, 1000)) == 91
        assert "pdm_cloud_store_up 1.0" in cloud.http.get("/metrics").text
    finally:
        if cloud is not None:
            cloud.close()
        server.stop("immediate")
        shutil.rmtree(server.workdir, ignore_errors=True)
