"""The whole system as separate processes against real brokers: normal run and faults.

Every test ends with the same check: the cloud store holds every tick of every replayed unit
exactly once, and a prediction for every complete window. The per-fault figures are printed
in the test run's summary (`FAULT SUMMARY`).
"""

from __future__ import annotations

import os
import random
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from contract import codec, topics
from contract.bundle import read_manifest
from contract.payloads import AlertEvent, AssetState
from edge_agent.sources.replay import unit_rows
from tests.conftest import DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY, REPO
from tests.support.broker import Mosquitto
from tests.support.mqtt import Recorder
from tests.support.system import System

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(), reason="no bundle"),
]
DATA = REPO / "data" / "cmapss" / "test_FD001.txt"
NEAR_FAILURE = [31, 34, 68, 81]  # true RUL 8, 7, 8, 8 (RUL_FD001)
HEALTHY = [9, 44]  # true RUL 111, 109; 55 and 54 cycles, so both fill a window of 50
SUMMARY: list[dict] = []


def lengths(units: list[int]) -> dict[str, int]:
    rows = unit_rows(DATA)
    return {f"engine-{u}": len(rows[u]) for u in units}


def wait_exactly_once(system: System, units: list[int], fault: str, timeout: float = 90):
    """Wait until the cloud holds every tick and prediction; record and check the figures."""
    want = lengths(units)
    window = read_manifest(DEFAULT_BUNDLE).window
    deadline = time.monotonic() + timeout
    while True:
        stored = {a: system.ticks(a) for a in want}
        preds = {a: system.predictions(a) for a in want}
        complete = all(len(stored[a]) >= n and len(preds[a]) >= n - window + 1
                       for a, n in want.items())
        if complete or time.monotonic() > deadline:
            break
        time.sleep(1)
    produced = sum(want.values())
    seqs = {a: [t["seq"] for t in stored[a]] for a in want}
    n_stored = sum(len(s) for s in seqs.values())
    duplicated = sum(len(s) - len(set(s)) for s in seqs.values())
    lost = sum(len(set(range(n)) - set(seqs[a])) for a, n in want.items())
    SUMMARY.append({"fault": fault, "produced": produced, "stored": n_stored,
                    "duplicated": duplicated, "lost": lost,
                    "redelivered_ignored": int(system.metric("pdm_cloud_duplicate_ticks_total"))})
    for a, n in want.items():
        assert sorted(seqs[a]) == list(range(n)), f"{fault}: {a} ticks not exactly once"
        pred_seqs = sorted(p["seq"] for p in preds[a])
        assert pred_seqs == list(range(window - 1, n)), f"{fault}: {a} predictions incomplete"
    return stored, preds


@pytest.fixture
def system(tmp_path, broker):
    s = System(tmp_path, broker, DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY, DATA,
               NEAR_FAILURE + HEALTHY, rate=float(os.environ.get("PDM_SYSTEM_RATE", 40)))
    yield s
    s.stop()


def test_normal_run_alerts_at_edge_and_cloud_and_stores_everything_once(system, broker):
    alerts = Recorder(broker.host, broker.port, [topics.subscription("alert", system.gateway),
                                                 topics.subscription("cloud-alert",
                                                                     system.gateway)])
    system.start_cloud()
    system.start_agent()
    _, preds = wait_exactly_once(system, NEAR_FAILURE + HEALTHY, "none")
    alerts.wait_for(lambda ms: {m.topic.split("/")[3] for m in ms if "cloud" in m.topic}
                    >= {f"engine-{u}" for u in NEAR_FAILURE}, timeout=30)
    events = [codec.decode_json(m.payload, AlertEvent) for m in alerts.messages]
    for unit in NEAR_FAILURE:
        for source in ("edge", "cloud"):
            states = {e.new_state.value for e in events
                      if e.asset == f"engine-{unit}" and e.source == source}
            assert states & {"WARNING", "CRITICAL"}, (unit, source, states)
    # the edge-vs-cloud difference is recorded for every window the edge scored
    for asset, items in preds.items():
        assert all(p["diff"] is not None and p["probability"] is not None for p in items), asset
    alerts.close()
    # a plain subscriber that connects now sees the retained states at once (as the README says)
    late = Recorder(broker.host, broker.port, [topics.subscription("state", system.gateway)])
    assert late.wait_for(lambda ms: len(ms) >= len(NEAR_FAILURE), timeout=5)
    states = [codec.decode_json(m.payload, AssetState) for m in late.messages]
    assert {s.asset for s in states if s.state.value != "NORMAL"} >= {
        f"engine-{u}" for u in NEAR_FAILURE}
    late.close()


def test_broker_restarted_mid_run(system, broker):
    system.start_cloud()
    system.start_agent()
    # Several restarts at uneven moments: some land while a batch waits for its acknowledgement.
    for pause in (1.5, 0.7, 1.1):
        time.sleep(pause)
        broker.restart()
    wait_exactly_once(system, NEAR_FAILURE + HEALTHY, "broker restarted")


def test_agent_sigkilled_and_restarted(system):
    system.start_cloud()
    system.start_agent()
    time.sleep(2)
    system.kill(system.agent)
    system.start_agent()
    wait_exactly_once(system, NEAR_FAILURE + HEALTHY, "agent SIGKILL")


def test_cloud_sigkilled_and_restarted(system):
    system.start_cloud()
    system.start_agent()
    time.sleep(2.5)
    system.kill(system.cloud)
    time.sleep(1)
    system.start_cloud()
    wait_exactly_once(system, NEAR_FAILURE + HEALTHY, "cloud SIGKILL")


def test_uplink_unreachable_while_local_alerts_flow(tmp_path, broker):
    uplink = Mosquitto(tmp_path / "uplink").start()
    s = System(tmp_path, broker, DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY, DATA, NEAR_FAILURE,
               rate=60, uplink=uplink)
    try:
        s.start_cloud()
        alerts = Recorder(broker.host, broker.port, [topics.subscription("alert", s.gateway)])
        uplink.stop()
        s.start_agent()
        assert alerts.wait_for(lambda ms: {m.topic.split("/")[3] for m in ms}
                               >= {f"engine-{u}" for u in NEAR_FAILURE}, timeout=60), \
            "local alerts must flow while the uplink is down"
        alerts.close()
        uplink.start()
        wait_exactly_once(s, NEAR_FAILURE, "uplink unreachable")
    finally:
        s.stop()
        uplink.stop()


def test_malformed_flood_alongside_real_traffic(system, broker):
    system.start_cloud()
    system.start_agent()
    rng = random.Random(7)
    sent = {"n": 0}
    stop = threading.Event()

    def flood():
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.connect(broker.host, broker.port)
        c.loop_start()
        while not stop.is_set() and sent["n"] < 500:
            junk = rng.choice([
                rng.randbytes(rng.randint(0, 300)),
                b"\x01" + rng.randbytes(50),
                b"\x07" + rng.randbytes(20),
                b'{"json": "is not the uplink codec"}',
            ])
            c.publish(topics.uplink(system.gateway), junk, qos=1).wait_for_publish(5)
            sent["n"] += 1
        c.loop_stop()
        c.disconnect()

    t = threading.Thread(target=flood)
    t.start()
    t.join(timeout=60)
    stop.set()
    wait_exactly_once(system, NEAR_FAILURE + HEALTHY, "malformed flood")
    deadline = time.monotonic() + 30
    while system.metric("pdm_cloud_dead_letters_total") < sent["n"]:
        assert time.monotonic() < deadline, "not every malformed message was dead-lettered"
        time.sleep(0.5)
    assert system.metric("pdm_cloud_dead_letters_total") == sent["n"]
