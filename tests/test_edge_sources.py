"""Industrial sources against real servers: pymodbus (the agent's simulated PLC) and asyncua,
on free loopback ports. Failures (a server gone, a server that never answers, bad values,
unknown registers and nodes) are counted and retried, never a crash."""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from contract.cmapss import COLUMNS
from edge_agent.config import ModbusRegister, ModbusSource, OpcUaSource
from edge_agent.health import Backoff, OutageLog
from edge_agent.plc_sim import PlcSimulator, cmapss_registers
from edge_agent.readings import Reading, ReadingChecker, Rejected
from edge_agent.sources.modbus import ModbusPoller, block_values, decode, encode, plan_blocks
from edge_agent.sources.opcua import LatestValues, OpcUaReader
from edge_agent.sources.replay import unit_rows
from tests.support.broker import free_port
from tests.support.industrial import OpcUaTestServer, SilentServer


class Collected:
    """What a source emitted and the failures it reported."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.failures: list[tuple[str, str]] = []
        self.states: list[bool] = []

    def emit(self, reading: Reading) -> None:
        self.readings.append(reading)

    def failed(self, reason: str, detail: str) -> None:
        self.failures.append((reason, detail))

    def up(self, ok: bool) -> None:
        self.states.append(ok)

    def reasons(self) -> set[str]:
        return {r for r, _ in self.failures}


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# --- the pure parts --------------------------------------------------------------------------
@pytest.mark.parametrize("data_type,value", [
    ("int16", -1234), ("uint16", 65000), ("int32", -70000), ("uint32", 4_000_000_000),
    ("float32", 642.5), ("int64", -2**40), ("uint64", 2**60), ("float64", 1588.123456789)])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_register_values_round_trip(data_type, value, word_order):
    words = encode(data_type, value, word_order)
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode(data_type, words, word_order) == pytest.approx(value)


def test_word_order_swaps_words_not_bytes():
    assert encode("float32", 1.0, "big") == [0x3F80, 0x0000]
    assert encode("float32", 1.0, "little") == [0x0000, 0x3F80]
    assert decode("int16", [0xFFFF]) == -1


def test_plan_reads_neighbours_together_and_applies_scale_and_offset():
    regs = {"temp": ModbusRegister(address=10, data_type="int16", scale=0.1, offset=-40),
            "speed": ModbusRegister(address=11, data_type="float32"),
            "far": ModbusRegister(address=300, data_type="uint16"),
            "in": ModbusRegister(address=0, register_type="input", data_type="uint32")}
    blocks = plan_blocks(regs)
    assert [(b.register, b.address, b.count) for b in blocks] == [
        ("holding", 10, 3), ("holding", 300, 1), ("input", 0, 2)]
    values = block_values(blocks[0], [encode("int16", 655)[0], *encode("float32", 2388.5)],
                          "big")
    assert values == {"temp": pytest.approx(25.5), "speed": 2388.5}


def test_plan_splits_at_125_registers_and_refuses_overlaps():
    regs = {f"f{i}": ModbusRegister(address=2 * i, data_type="float32") for i in range(100)}
    blocks = plan_blocks(regs)
    assert [b.count for b in blocks] == [124, 76]
    assert sum(len(b.fields) for b in blocks) == 100
    with pytest.raises(ValueError, match="overlaps"):
        plan_blocks({"a": ModbusRegister(address=0, data_type="float32"),
                     "b": ModbusRegister(address=1)})


def test_latest_values_complete_an_asset_only_with_every_feature():
    latest = LatestValues({"p1": {"t": "ns=2;s=a", "s": "ns=2;s=b"}, "p2": {"t": "ns=2;s=a"}})
    latest.update("ns=2;s=a", 1.0)
    assert latest.complete() == {"p2": {"t": 1.0}}
    latest.update("ns=2;s=b", 2.0)
    assert latest.complete() == {"p1": {"t": 1.0, "s": 2.0}, "p2": {"t": 1.0}}
    latest.forget()
    assert latest.complete() == {}


def test_outage_log_reports_first_failure_then_periodically_then_recovery(caplog):
    now = [0.0]
    outage = OutageLog(logging.getLogger("test.outage"), "broker h:1", every=60,
                       clock=lambda: now[0])
    with caplog.at_level(logging.INFO, "test.outage"):
        for t in range(0, 130, 5):
            now[0] = float(t)
            outage.failed("connection refused")
        assert outage.down_for == 125
        now[0] = 130.0
        outage.recovered()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("ERROR", "broker h:1 unreachable: connection refused"),
        ("ERROR", "broker h:1 still unreachable after 60 s (13 failed attempts): "
                  "connection refused"),
        ("ERROR", "broker h:1 still unreachable after 120 s (25 failed attempts): "
                  "connection refused"),
        ("INFO", "broker h:1 reachable again after 130 s (26 failed attempts)")]
    assert outage.down_for == 0


def test_backoff_doubles_to_a_limit_and_starts_over():
    b = Backoff(0.5, 3)
    assert [b.next() for _ in range(5)] == [0.5, 1, 2, 3, 3]
    b.reset()
    assert b.next() == 0.5


# --- Modbus against the simulated PLC (pymodbus server) ---------------------------------------
@pytest.fixture
def fd001_rows(data_dir) -> dict[int, np.ndarray]:
    return unit_rows(Path(data_dir) / "test_FD001.txt")


def modbus_source(port: int, features: list[str], units=(1, 2), **extra) -> ModbusSource:
    return ModbusSource(type="modbus", host="127.0.0.1", port=port, poll_interval=0.05,
                        timeout=0.5, max_backoff=0.4, registers=cmapss_registers(features),
                        assets=[{"asset": f"engine-{u}", "unit_id": u} for u in units],
                        **extra)


def start_poller(cfg: ModbusSource) -> tuple[ModbusPoller, Collected, threading.Event]:
    got, stop = Collected(), threading.Event()
    poller = ModbusPoller("modbus-t", cfg, got.emit, stop, got.failed, got.up)
    poller.start()
    return poller, got, stop


def test_modbus_readings_carry_the_plcs_rows_per_unit_id(fd001_rows):
    features = ["cycle", "sensor_2", "sensor_7", "sensor_11"]
    sim = PlcSimulator({1: fd001_rows[1], 2: fd001_rows[2]}, port=free_port(), rate=0).start()
    poller, got, stop = start_poller(modbus_source(sim.port, features))
    try:
        assert wait_until(lambda: len(got.readings) >= 6)
    finally:
        stop.set()
        poller.join(5)
        sim.stop()
    assert not got.failures
    by_asset = {r.asset: r for r in got.readings}
    for unit in (1, 2):
        row = fd001_rows[unit][0]  # rate 0: the first row stays
        want = {f: float(np.float32(row[COLUMNS.index(f)])) for f in features}
        assert by_asset[f"engine-{unit}"].values == pytest.approx(want)
    times = [r.time for r in got.readings if r.asset == "engine-1"]
    assert times == sorted(set(times))  # strictly increasing, as the checker requires


def test_modbus_server_going_away_is_counted_logged_once_and_recovered(fd001_rows, caplog):
    port = free_port()
    sim = PlcSimulator({1: fd001_rows[1]}, port=port, rate=0).start()
    poller, got, stop = start_poller(modbus_source(port, ["sensor_2"], units=(1,)))
    try:
        with caplog.at_level(logging.INFO, "edge_agent.sources.modbus"):
            assert wait_until(lambda: len(got.readings) >= 2)
            sim.stop()
            assert wait_until(lambda: len(got.failures) >= 3)
            assert poller.is_alive()
            before = len(got.readings)
            sim = PlcSimulator({1: fd001_rows[1]}, port=port, rate=0).start()
            assert wait_until(lambda: len(got.readings) > before + 2)
    finally:
        stop.set()
        poller.join(5)
        sim.stop()
    assert got.reasons() <= {"connect", "timeout"}, got.failures
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # then one line a minute
    assert f"Modbus server 127.0.0.1:{port}" in errors[0].getMessage()
    assert any("working again" in r.getMessage() for r in caplog.records)
    assert got.states[0] is True and False in got.states and got.states[-1] is True


def test_modbus_server_that_never_answers_times_out_and_is_retried():
    silent = SilentServer()
    poller, got, stop = start_poller(modbus_source(silent.port, ["sensor_2"], units=(1,)))
    try:
        assert wait_until(lambda: len(got.failures) >= 2, timeout=15)
        assert poller.is_alive()
    finally:
        stop.set()
        poller.join(5)
        silent.close()
    assert got.reasons() <= {"timeout", "connect"}, got.failures
    assert "timeout" in got.reasons()
    assert not got.readings


@pytest.mark.security
def test_modbus_unknown_register_is_an_exception_counted_not_a_crash(fd001_rows):
    sim = PlcSimulator({1: fd001_rows[1]}, port=free_port(), rate=0).start()
    cfg = modbus_source(sim.port, ["sensor_2"], units=(1,))
    cfg.registers["ghost"] = ModbusRegister(address=900, data_type="uint16")
    poller, got, stop = start_poller(cfg)
    try:
        assert wait_until(lambda: len(got.failures) >= 2)
        assert poller.is_alive()
    finally:
        stop.set()
        poller.join(5)
        sim.stop()
    assert got.reasons() == {"exception"}
    assert "exception code" in got.failures[0][1]


@pytest.mark.security
def test_modbus_nan_and_infinite_values_reach_the_checker_and_are_refused(fd001_rows):
    rows = fd001_rows[1].copy()
    s2, s3 = COLUMNS.index("sensor_2"), COLUMNS.index("sensor_3")
    rows[:, s2], rows[:, s3] = np.nan, np.inf
    sim = PlcSimulator({1: rows}, port=free_port(), rate=0).start()
    poller, got, stop = start_poller(modbus_source(sim.port, ["sensor_2", "sensor_3"],
                                                   units=(1,)))
    try:
        assert wait_until(lambda: len(got.readings) >= 1)
    finally:
        stop.set()
        poller.join(5)
        sim.stop()
    reading = got.readings[0]
    assert math.isnan(reading.values["sensor_2"]) and math.isinf(reading.values["sensor_3"])
    with pytest.raises(Rejected) as refused:
        ReadingChecker(["sensor_2", "sensor_3"]).check(reading)
    assert refused.value.reason == "not_finite"


def test_simulated_plc_advances_rows_at_its_rate(fd001_rows):
    sim = PlcSimulator({1: fd001_rows[1]}, rate=10)
    sim._started = 100.0
    assert [sim.row_index(1, 100.0 + t) for t in (0, 0.05, 0.15, 1.05)] == [0, 0, 1, 10]
    assert sim.row_index(1, 1e6) == len(fd001_rows[1]) - 1
    looping = PlcSimulator({1: fd001_rows[1]}, rate=10, loop=True)
    looping._started = 0.0
    assert looping.row_index(1, len(fd001_rows[1]) / 10) == 0
    with pytest.raises(ValueError, match="1..247"):
        PlcSimulator({300: fd001_rows[1]})


# --- OPC UA against an asyncua server ---------------------------------------------------------
def opcua_source(server: OpcUaTestServer, mode: str, assets: dict[str, list[str]],
                 **extra) -> OpcUaSource:
    return OpcUaSource(type="opcua", url=server.url, mode=mode, interval=0.1, timeout=1.0,
                       max_backoff=0.4, **extra,
                       assets=[{"asset": a, "nodes": {f: server.node_id(a, f) for f in feats}}
                               for a, feats in assets.items()])


@pytest.fixture
def opcua_server():
    server = OpcUaTestServer({"pump-1": {"pressure": 1.5, "temp": 20.0},
                              "pump-2": {"pressure": 2.5, "temp": 30.0},
                              "pump-3": {"temp": "hot"}}).start()  # a string variable
    yield server
    server.stop()


def start_reader(cfg: OpcUaSource) -> tuple[OpcUaReader, Collected, threading.Event]:
    got, stop = Collected(), threading.Event()
    reader = OpcUaReader("opcua-t", cfg, got.emit, stop, got.failed, got.up)
    reader.start()
    return reader, got, stop


@pytest.mark.parametrize("mode", ["subscription", "polling"])
def test_opcua_readings_follow_the_servers_values(opcua_server, mode):
    cfg = opcua_source(opcua_server, mode, {"pump-1": ["pressure", "temp"],
                                            "pump-2": ["pressure"]})
    reader, got, stop = start_reader(cfg)
    try:
        assert wait_until(lambda: {r.asset for r in got.readings} == {"pump-1", "pump-2"})
        opcua_server.set("pump-1", "temp", 99.5)
        assert wait_until(lambda: any(r.values.get("temp") == 99.5 for r in got.readings))
    finally:
        stop.set()
        reader.join(10)
    assert not got.failures
    first = next(r for r in got.readings if r.asset == "pump-1")
    assert first.values == {"pressure": 1.5, "temp": 20.0}
    assert next(r for r in got.readings if r.asset == "pump-2").values == {"pressure": 2.5}


@pytest.mark.security
def test_opcua_unknown_node_and_non_numeric_values_are_counted(opcua_server):
    bad_node = opcua_source(opcua_server, "polling", {"pump-1": ["pressure"]})
    bad_node.assets[0].nodes["ghost"] = "ns=2;s=pump-1.ghost"
    reader, got, stop = start_reader(bad_node)
    try:
        assert wait_until(lambda: len(got.failures) >= 2)
        assert reader.is_alive()
    finally:
        stop.set()
        reader.join(10)
    assert got.reasons() == {"status"}, got.failures
    assert not got.readings

    reader, got, stop = start_reader(opcua_source(opcua_server, "polling", {"pump-3": ["temp"]}))
    try:
        assert wait_until(lambda: len(got.readings) >= 1)
    finally:
        stop.set()
        reader.join(10)
    with pytest.raises(Rejected) as refused:
        ReadingChecker(["temp"]).check(got.readings[0])
    assert refused.value.reason == "not_a_number"


@pytest.mark.slow
def test_opcua_server_restart_is_survived(opcua_server, caplog):
    cfg = opcua_source(opcua_server, "subscription", {"pump-1": ["pressure"]})
    reader, got, stop = start_reader(cfg)
    try:
        with caplog.at_level(logging.INFO, "edge_agent.sources.opcua"):
            assert wait_until(lambda: len(got.readings) >= 2)
            opcua_server.stop()
            assert wait_until(lambda: len(got.failures) >= 1, timeout=15)
            assert reader.is_alive()
            before = len(got.readings)
            opcua_server.start()
            assert wait_until(lambda: len(got.readings) > before + 2, timeout=20)
    finally:
        stop.set()
        reader.join(10)
    assert [r for r in caplog.records if r.levelname == "ERROR"][0].getMessage().startswith(
        f"OPC UA server {opcua_server.url} (opcua-t) failing")
    assert any("working again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", ["agent.modbus.yaml", "agent.opcua.yaml"])
def test_example_configs_are_valid(name):
    from contract.bundle import read_manifest
    from edge_agent.config import load_config
    from tests.conftest import REPO

    cfg = load_config(REPO / "deploy" / "gateway" / name)
    src = cfg.sources[0]
    if isinstance(src, ModbusSource):  # the register map the simulated PLC serves
        # every input of the bundle it names, or the agent refuses every reading
        assert set(read_manifest(REPO / cfg.bundle.path).features) <= set(src.registers)
        assert {k: (r.address, r.data_type) for k, r in src.registers.items()} == {
            k: (v["address"], v["data_type"])
            for k, v in cmapss_registers(list(src.registers)).items()}


@pytest.mark.security
def test_opcua_basic256sha256_reads_with_certificates_and_refuses_without(tmp_path):
    from tests.support.industrial import make_opcua_certificate

    server_cert, server_key = make_opcua_certificate(tmp_path, "server", server=True)
    client_cert, client_key = make_opcua_certificate(tmp_path, "client", server=False)
    server = OpcUaTestServer({"pump-1": {"pressure": 4.5}}, certificate=server_cert,
                             private_key=server_key).start()
    try:
        plain = opcua_source(server, "polling", {"pump-1": ["pressure"]})
        reader, got, stop = start_reader(plain)  # no security: the server offers none such
        try:
            assert wait_until(lambda: len(got.failures) >= 1)
        finally:
            stop.set()
            reader.join(10)
        assert not got.readings
        assert got.reasons() == {"security"}, got.failures

        secure = opcua_source(server, "subscription", {"pump-1": ["pressure"]},
                              security_policy="Basic256Sha256", certificate=client_cert,
                              private_key=client_key, server_certificate=server_cert)
        reader, got, stop = start_reader(secure)
        try:
            assert wait_until(lambda: len(got.readings) >= 2), got.failures
        finally:
            stop.set()
            reader.join(10)
        assert got.readings[0].values == {"pressure": 4.5}
    finally:
        server.stop()
