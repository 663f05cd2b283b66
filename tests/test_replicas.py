"""Three cloud replicas as separate processes on one broker and one PostgreSQL store, one of
them SIGKILLed mid-stream: every tick stored once, every complete window predicted once, each
asset's cloud alerts the same as a one-replica run of the same data (on the embedded SQLite
store), the killed replica's
assets taken over within a lease period, and every replica serving the whole fleet."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from contract.bundle import read_manifest
from tests.conftest import DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY
from tests.support.broker import Mosquitto
from tests.support.system import System
from tests.test_system import DATA, HEALTHY, NEAR_FAILURE, SUMMARY, lengths, wait_exactly_once

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(), reason="no bundle"),
]
UNITS = NEAR_FAILURE + HEALTHY + [3, 4, 5]
LEASE = 3.0
# Fast enough to be mid-stream after a few seconds, slow enough to take a kill in its middle.
RATE = 25.0
CLOUD = {"scoring": {"lease_seconds": LEASE, "gap_wait": 120}}


def cloud_alerts(system: System, replica: int = 0) -> dict[str, list[tuple]]:
    rows = system.pages(f"/api/v1/alerts?gateway={system.gateway}", key="after_id")
    by_asset: dict[str, list[tuple]] = {}
    for r in rows:
        if r["source"] == "cloud":
            by_asset.setdefault(r["asset"], []).append(
                (r["seq"], r["old_state"], r["new_state"]))
    return by_asset


def owned(system: System, replicas: list[int]) -> int:
    return int(sum(system.metric("pdm_cloud_assets_owned", i) for i in replicas))


def run_reference(work: Path) -> dict[str, list[tuple]]:
    broker = Mosquitto(work / "broker").start()
    system = System(work, broker, DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY, DATA, UNITS, rate=RATE,
                    cloud_extra=CLOUD)
    try:
        system.start_cloud()
        system.start_agent()
        wait_exactly_once(system, UNITS, "one replica (reference)", timeout=180)
        SUMMARY.pop()  # the reference is not a fault
        return cloud_alerts(system)
    finally:
        system.stop()
        broker.stop()


def test_three_replicas_one_sigkilled_lose_duplicate_and_double_score_nothing(
        tmp_path, broker, postgres_url):
    reference = run_reference(tmp_path / "reference")
    assert set(reference) >= {f"engine-{u}" for u in NEAR_FAILURE}, reference
    work = tmp_path / "replicas"
    work.mkdir()
    system = System(work, broker, DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY, DATA, UNITS, rate=RATE,
                    replicas=3, store={"url": postgres_url}, cloud_extra=CLOUD)
    try:
        for i in range(3):
            system.start_cloud(i)
        system.start_agent()
        fleet = len(UNITS)
        deadline = time.monotonic() + 30
        while owned(system, [0, 1, 2]) < fleet or not all(
                system.metric("pdm_cloud_assets_owned", i) for i in range(3)):
            assert time.monotonic() < deadline, "the replicas did not share out the fleet"
            time.sleep(0.2)
        time.sleep(2.0)
        victim_owned = int(system.metric("pdm_cloud_assets_owned", 1))
        system.kill(system.clouds[1])
        killed_at = time.monotonic()
        while owned(system, [0, 2]) < fleet:
            assert time.monotonic() - killed_at < 3 * LEASE, \
                "the killed replica's assets were not taken over"
            time.sleep(0.1)
        moved_after = time.monotonic() - killed_at
        # Its broker session keeps the uplink share it had not acknowledged; it comes back
        # under the same client id (as a restarted pod does) and that share is delivered.
        time.sleep(1.0)
        system.start_cloud(1)
        wait_exactly_once(system, UNITS, "replica SIGKILL", timeout=240)
        print(f"\n{victim_owned} assets of the killed replica moved in {moved_after:.1f} s")
        window = read_manifest(DEFAULT_BUNDLE).window
        want = lengths(UNITS)
        for i in range(3):  # every replica serves the whole fleet from the shared store
            assets = {a["asset"] for a in system.get(f"/api/v1/assets?gateway={system.gateway}",
                                                     i)}
            assert assets == set(want), i
        preds = {a: system.predictions(a) for a in want}
        scorers = {p["scored_by"] for items in preds.values() for p in items}
        assert len(scorers) >= 2, scorers
        assert sum(len(v) for v in preds.values()) == sum(n - window + 1 for n in want.values())
        assert sum(system.metric("pdm_cloud_windows_scored_twice_total", i)
                   for i in range(3)) == 0
        assert cloud_alerts(system) == reference
    finally:
        system.stop()


def test_a_replica_removed_for_good_hands_its_uplink_share_over(tmp_path, broker):
    """A scale-down: one of two replicas is stopped mid-stream and never comes back. Its broker
    session would keep queuing its share of the uplink; it hands the share over instead, so the
    other replica stores and scores everything."""
    system = System(tmp_path, broker, DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY, DATA, UNITS,
                    rate=RATE, replicas=2, cloud_extra=CLOUD)
    try:
        for i in range(2):
            system.start_cloud(i)
        system.start_agent()
        deadline = time.monotonic() + 30
        while not all(system.metric("pdm_cloud_ticks_received_total", i) for i in range(2)):
            assert time.monotonic() < deadline, "the replicas did not share the uplink"
            time.sleep(0.2)
        time.sleep(1.5)
        system.kill(system.clouds[1], signal.SIGTERM)  # uvicorn re-raises it once it stopped
        log = system.logs[1].read_text()
        assert "handed the uplink over" in log, log[-3000:]
        wait_exactly_once(system, UNITS, "replica removed", timeout=120)
        assert system.metric("pdm_cloud_assets_owned", 0) == len(UNITS)
    finally:
        system.stop()
