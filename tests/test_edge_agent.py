"""The agent as a real process against a real Mosquitto, with the committed default bundle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from contract import codec, topics
from contract.bundle import read_manifest
from contract.payloads import AlertEvent, AssetState, UplinkBatch
from tests.conftest import DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY, REPO
from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import Recorder
from tests.support.procs import track

PUBKEY = DEFAULT_BUNDLE_KEY
pytestmark = pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(),
                                reason="default bundle not built yet")
GW = "gw-test"


def write_config(tmp_path: Path, broker, data_dir: Path, units, rate: float = 0.0,
                 extra: dict | None = None, tls=None, transport: str = "mqtt") -> Path:
    broker_cfg = {"host": broker.host, "port": broker.port, "transport": transport}
    if tls is not None:
        broker_cfg["tls"] = {"enabled": True, "ca_file": str(tls.ca),
                             "cert_file": str(tls.client_cert), "key_file": str(tls.client_key)}
    cfg = {
        "gateway_id": GW,
        "broker": broker_cfg,
        "sources": [{"type": "cmapss", "file": str(data_dir / "test_FD001.txt"),
                     "units": units, "rate": rate}],
        "bundle": {"path": str(DEFAULT_BUNDLE), "trusted_keys": [str(PUBKEY)]},
        "outbox": {"path": str(tmp_path / "outbox.db"), "batch_max_age": 0.2},
        **(extra or {}),
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_agent(config: Path, *args: str) -> subprocess.Popen:
    """The agent logs to a file beside its config (a pipe nobody reads would block it)."""
    log = config.parent / f"agent-{len(list(config.parent.glob('agent-*.log')))}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(config), *args], cwd=REPO,
        stdout=log.open("w"), stderr=subprocess.STDOUT)
    proc.log_path = log
    return track(proc)


def agent_log(proc: subprocess.Popen, tail: int = 6000) -> str:
    return proc.log_path.read_text()[-tail:]


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"agent still running after {timeout}s; its log:\n"
                             f"{agent_log(proc)}") from None
    out = proc.log_path.read_text()
    assert proc.returncode == 0, out[-6000:]
    return out


def unit_lengths(data_dir: Path) -> dict[int, int]:
    lines = (data_dir / "test_FD001.txt").read_text().splitlines()
    units = [int(line.split()[0]) for line in lines if line.strip()]
    return {u: units.count(u) for u in set(units)}


def uplinked(messages) -> list[tuple[str, int]]:
    seen = []
    for m in messages:
        batch: UplinkBatch = codec.decode_uplink(m.payload)
        seen += [(batch.asset, s) for s in batch.seqs]
    return seen


def expected_seqs(data_dir: Path, units: list[int]) -> set[tuple[str, int]]:
    lengths = unit_lengths(data_dir)
    return {(f"engine-{u}", s) for u in units for s in range(lengths[u])}


def test_unit_near_failure_raises_warning_then_critical_and_state_is_retained(
        tmp_path, broker, data_dir):
    rec = Recorder(broker.host, broker.port, [topics.subscription("alert", GW)])
    config = write_config(tmp_path, broker, data_dir, units=[34, 68])  # true RUL 7 and 8
    finish(start_agent(config, "--exit-when-drained"))
    assert rec.wait_for(lambda ms: len(ms) >= 2, timeout=10)
    events = [codec.decode_json(m.payload, AlertEvent) for m in rec.messages]
    for asset in ("engine-34", "engine-68"):
        states = [e.new_state.value for e in events if e.asset == asset]
        assert "CRITICAL" in states, (asset, states)
        first_warning = states.index("WARNING") if "WARNING" in states else None
        assert first_warning is not None and first_warning < states.index("CRITICAL")
    e = events[-1]
    assert e.source == "edge" and e.gateway == GW and e.latency_ms is not None
    assert e.model_version == read_manifest(DEFAULT_BUNDLE).version
    rec.close()

    late = Recorder(broker.host, broker.port, [topics.subscription("state", GW)])
    assert late.wait_for(lambda ms: len(ms) >= 2, timeout=5), "retained states not delivered"
    states = {m.topic: codec.decode_json(m.payload, AssetState) for m in late.messages}
    assert all(m.retain for m in late.messages)
    assert {s.state.value for s in states.values()} == {"CRITICAL"}
    late.close()


def test_a_quiet_asset_has_a_retained_state_too(tmp_path, broker, data_dir):
    """A viewer counts every scored asset, not only those that changed state."""
    # true RUL 111 and 7; unit 9's 55 cycles fill a window (unit 1's 31 would not: no score)
    config = write_config(tmp_path, broker, data_dir, units=[9, 34])
    finish(start_agent(config, "--exit-when-drained"))
    late = Recorder(broker.host, broker.port, [topics.subscription("state", GW)])
    assert late.wait_for(lambda ms: len(ms) >= 2, timeout=5), "retained states not delivered"
    states = {codec.decode_json(m.payload, AssetState).asset:
              codec.decode_json(m.payload, AssetState) for m in late.messages}
    assert states["engine-9"].state.value == "NORMAL" and states["engine-9"].seq >= 0
    assert states["engine-34"].state.value == "CRITICAL"
    late.close()


def test_uplink_survives_a_broker_outage_without_gaps(tmp_path, broker, data_dir):
    units = [1, 2, 3]
    rec = Recorder(broker.host, broker.port, [topics.uplink(GW)], persistent=True)
    config = write_config(tmp_path, broker, data_dir, units=units, rate=40)
    agent = start_agent(config, "--exit-when-drained")
    assert rec.wait_for(lambda ms: len(ms) >= 3, timeout=30)
    broker.stop()
    time.sleep(3)  # the agent keeps replaying and scoring into its outbox meanwhile
    broker.start()
    out = finish(agent)
    want = expected_seqs(data_dir, units)
    assert rec.wait_for(lambda ms: set(uplinked(ms)) >= want, timeout=30), out
    assert set(uplinked(rec.messages)) == want
    rec.close()


def test_agent_killed_and_restarted_resumes_without_gaps(tmp_path, broker, data_dir):
    units = [5, 6]
    rec = Recorder(broker.host, broker.port, [topics.uplink(GW)], persistent=True)
    config = write_config(tmp_path, broker, data_dir, units=units, rate=40)
    agent = start_agent(config, "--exit-when-drained")
    assert rec.wait_for(lambda ms: len(ms) >= 3, timeout=30)
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    finish(start_agent(config, "--exit-when-drained"))
    want = expected_seqs(data_dir, units)
    assert rec.wait_for(lambda ms: set(uplinked(ms)) >= want, timeout=30)
    assert set(uplinked(rec.messages)) == want
    rec.close()


@pytest.mark.parametrize("transport", ["mqtt", "aws-iot"])
def test_mutual_tls_transports_deliver_alerts_and_uplink(tmp_path, tls_broker, data_dir,
                                                         transport):
    tls = tls_broker.tls
    rec = Recorder(tls_broker.host, tls_broker.port,
                   [topics.uplink(GW), topics.subscription("alert", GW)], tls=tls)
    config = write_config(tmp_path, tls_broker, data_dir, units=[34], tls=tls,
                          transport=transport)
    finish(start_agent(config, "--exit-when-drained"))
    want = expected_seqs(data_dir, [34])
    assert rec.wait_for(lambda ms: set(uplinked(
        [m for m in ms if m.topic.endswith("/uplink")])) >= want, timeout=30)
    assert any(m.topic.endswith("/alert") for m in rec.messages)
    rec.close()


def test_bad_raw_readings_are_counted_and_skipped(tmp_path, broker, data_dir):
    metrics_port = free_port()
    config = write_config(tmp_path, broker, data_dir, units=[1], extra={
        "sources": [{"type": "mqtt"}], "metrics_port": metrics_port})
    agent = start_agent(config, "--duration", "6")
    import paho.mqtt.client as mqtt

    feats = read_manifest(DEFAULT_BUNDLE).features
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    time.sleep(2.5)  # let the agent subscribe
    good = {f: 1.0 for f in feats}
    sends = [
        ("pump-1", b"{not json"),
        ("pump-1", json.dumps({"time": 1, "values": {**good, feats[0]: "high"}}).encode()),
        ("pump-1", json.dumps({"time": 2, "values": {k: v for k, v in good.items()
                                                     if k != feats[1]}}).encode()),
        ("pump-1", json.dumps({"time": 3, "values": good}).encode()),
        ("pump-1", json.dumps({"time": 3, "values": good}).encode()),
    ]
    for asset, payload in sends:
        pub.publish(topics.raw(GW, asset), payload, qos=1).wait_for_publish(5)
    pub.loop_stop()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read()
        if b'pdm_edge_ticks_total 1.0' in metrics:
            break
        time.sleep(0.1)
    text = metrics.decode()
    for reason in ("bad_payload", "not_a_number", "missing_feature", "time_backwards"):
        assert f'pdm_edge_rejected_readings_total{{reason="{reason}"}} 1.0' in text, text
    assert "pdm_edge_ticks_total 1.0" in text
    out = finish(agent)
    assert "payload is not JSON" in out
    assert f"asset pump-1: feature {feats[0]} is not a number ('high')" in out
    assert f"asset pump-1: missing feature {feats[1]}" in out
    assert "asset pump-1: time 3 is not after the previous 3" in out
    assert out.count("rejected reading") == 4


def test_agent_process_never_imports_tensorflow(tmp_path, broker, data_dir):
    config = write_config(tmp_path, broker, data_dir, units=[34])
    code = (
        "import sys\n"
        "from edge_agent.config import load_config\n"
        "from edge_agent.agent import Agent\n"
        f"a = Agent(load_config({str(config)!r}))\n"
        "a.start()\n"
        "a.run(until=a.drained)\n"
        "a.stop()\n"
        "print('scored', int(a.metrics.scored._value.get()))\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "False False", out.stderr
    assert int(lines[-2].split()[1]) > 100


def test_bad_config_is_refused_with_key_and_reason(tmp_path):
    bad = tmp_path / "agent.yaml"
    bad.write_text("gateway_id: gw-1\noutbox: {batch_max_ticks: 0, colour: red}\n")
    out = subprocess.run([sys.executable, "-m", "edge_agent", "check-config", str(bad)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "outbox.batch_max_ticks: Input should be greater than or equal to 1" in out.stderr
    assert "outbox.colour: unknown key" in out.stderr


def test_alerts_flow_while_the_uplink_is_unreachable_and_ticks_follow_later(
        tmp_path, broker, data_dir):
    uplink = Mosquitto(tmp_path / "uplink-broker").start()
    # A persistent session, so the broker queues every batch for the recorder from its start.
    rec = Recorder(uplink.host, uplink.port, [topics.uplink(GW)], persistent=True)
    uplink.stop()
    units = [34, 68]
    alerts = Recorder(broker.host, broker.port, [topics.subscription("alert", GW)])
    config = write_config(tmp_path, broker, data_dir, units=units, rate=100, extra={
        "uplink": {"host": uplink.host, "port": uplink.port}})
    agent = start_agent(config)
    try:
        assert alerts.wait_for(lambda ms: {codec.decode_json(m.payload, AlertEvent).asset
                                           for m in ms} == {"engine-34", "engine-68"},
                               timeout=60), "no local alerts while the uplink was down"
        uplink.start()
        want = expected_seqs(data_dir, units)
        assert rec.wait_for(lambda ms: set(uplinked(ms)) >= want, timeout=90), (
            f"missing {len(want - set(uplinked(rec.messages)))} of {len(want)} ticks; "
            f"agent log:\n{agent_log(agent)}")
        assert set(uplinked(rec.messages)) == want
        rec.close()
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        uplink.stop()
        alerts.close()


def test_the_viewer_lists_assets_known_only_from_cloud_alerts(broker):
    """Through a real broker: retained edge states of some assets, cloud alerts about others;
    the viewer counts them all."""
    import threading
    import uuid

    import paho.mqtt.client as mqtt

    from edge_agent.viewer import AlertBoard, watch
    from tests.test_edge_core import _event, _state

    gw = f"gw-view-{uuid.uuid4().hex[:6]}"
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    board = AlertBoard()
    viewer = threading.Thread(target=watch, args=(broker.host, broker.port, gw, 8.0),
                              kwargs={"board": board}, daemon=True)
    try:
        for i in range(30):
            pub.publish(topics.state(gw, f"e{i}"), codec.encode_json(_state(gw, f"e{i}")), qos=1,
                        retain=True).wait_for_publish(10)
        viewer.start()
        deadline = time.monotonic() + 4
        while len(board.assets) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(board.assets) == 30, "the retained states did not reach the viewer"
        for i in range(20, 100):
            pub.publish(topics.cloud_alert(gw, f"e{i}"),
                        codec.encode_json(_event(gw, f"e{i}", "NORMAL", "WARNING")),
                        qos=1).wait_for_publish(10)
        while len(board.assets) < 100 and time.monotonic() < deadline + 3:
            time.sleep(0.05)
        assert len(board.assets) == 100
        assert "(100 assets)" in str(board.table().title)
    finally:
        for i in range(30):  # clear the retained states
            pub.publish(topics.state(gw, f"e{i}"), b"", qos=1, retain=True).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        if viewer.ident is not None:
            viewer.join(15)  # it stops after its 8 seconds
