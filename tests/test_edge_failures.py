"""Honest failure reporting: an unreachable broker is an ERROR and a gauge, a clean stop is
INFO, `check-config --connect` tests the links, CLI errors are one line, `-h` is help, and a
misspelled or bad environment variable is refused with the name, the value and its source."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from contract.settings import ConfigError
from tests.conftest import DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY, REPO
from tests.support.broker import free_port
from tests.support.procs import track

GW = "gw-fail"


def agent_config(tmp_path: Path, broker_port: int, data_dir: Path, **extra) -> Path:
    cfg = {"gateway_id": GW, "broker": {"host": "127.0.0.1", "port": broker_port},
           "sources": [{"type": "cmapss", "file": str(data_dir / "test_FD001.txt"),
                        "units": [1], "rate": 20}],
           "bundle": {"path": str(DEFAULT_BUNDLE), "trusted_keys": [str(DEFAULT_BUNDLE_KEY)]},
           "outbox": {"path": str(tmp_path / "outbox.db")}, **extra}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def metric(port: int, line_start: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_metric(port: int, line_start: str, predicate, timeout: float = 20) -> float | None:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = metric(port, line_start)
        except OSError:
            value = None
        if value is not None and predicate(value):
            return value
        time.sleep(0.2)
    return value


def test_unreachable_broker_is_an_error_a_gauge_and_a_nonzero_exit(tmp_path, data_dir):
    dead, metrics_port = free_port(), free_port()
    config = agent_config(tmp_path, dead, data_dir, metrics_port=metrics_port)
    proc = track(subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "-c", str(config), "--duration", "5"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    up = wait_metric(metrics_port, 'pdm_edge_broker_up{role="broker"}', lambda v: True)
    down_for = wait_metric(metrics_port, 'pdm_edge_broker_down_seconds{role="broker"}',
                           lambda v: v > 0.5)
    out, _ = proc.communicate(timeout=60)
    assert up == 0.0, out
    assert down_for is not None and down_for > 0.5, out
    assert proc.returncode == 3, out
    unreachable = [line for line in out.splitlines() if "unreachable" in line]
    assert len(unreachable) == 1, out  # the first failure; reminders come once a minute
    assert f"ERROR edge_agent.transport: broker 127.0.0.1:{dead} unreachable: connection " \
           "refused" in unreachable[0]
    assert "stopped without ever reaching broker 127.0.0.1" in out
    assert "Traceback" not in out


def test_clean_stop_is_info_and_exit_zero(tmp_path, broker, data_dir):
    config = agent_config(tmp_path, broker.port, data_dir)
    out = cli("edge_agent", "run", "-c", str(config), "--duration", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert not [line for line in lines if " WARNING " in line or " ERROR " in line], out.stderr
    assert any(f"INFO edge_agent.transport: disconnected from broker 127.0.0.1:{broker.port}"
               in line for line in lines), out.stderr
    assert lines[-1].endswith(f"INFO edge_agent: agent {GW} stopped")


def test_check_config_connect_tests_every_link(tmp_path, broker, data_dir):
    from edge_agent.plc_sim import PlcSimulator, cmapss_registers
    from edge_agent.sources.replay import unit_rows

    sim = PlcSimulator({1: unit_rows(data_dir / "test_FD001.txt")[1]}, port=free_port()).start()
    modbus = {"type": "modbus", "host": "127.0.0.1", "port": sim.port,
              "registers": cmapss_registers(["sensor_2"]), "assets": [{"asset": "e1"}]}
    try:
        good = cli("edge_agent", "check-config", "--connect", str(agent_config(
            tmp_path, broker.port, data_dir, sources=[modbus])))
        assert good.returncode == 0, good.stdout + good.stderr
        assert good.stdout.splitlines() == [
            f"broker 127.0.0.1:{broker.port}: ok", f"modbus-0 127.0.0.1:{sim.port}: ok"]
    finally:
        sim.stop()
    dead = free_port()
    bad = cli("edge_agent", "check-config", "--connect", "--timeout", "3", str(agent_config(
        tmp_path, broker.port, data_dir, uplink={"host": "127.0.0.1", "port": dead},
        sources=[modbus])))
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        f"broker 127.0.0.1:{broker.port}: ok",
        f"uplink 127.0.0.1:{dead}: FAILED: connection refused",
        f"modbus-0 127.0.0.1:{sim.port}: FAILED: cannot connect to 127.0.0.1:{sim.port}"]
    assert "Traceback" not in bad.stderr


def test_cli_errors_are_one_line_and_h_is_help(tmp_path):
    port = free_port()
    viewer = cli("edge_agent", "alerts", "--port", str(port), "--seconds", "1")
    assert viewer.returncode == 1
    assert viewer.stderr.strip() == (f"error: cannot connect to the broker at 127.0.0.1:{port}: "
                                     "connection refused")
    (tmp_path / "plain").write_text("a file where the key folder should be")
    keygen = cli("converter", "keygen", str(tmp_path / "plain" / "signing.key"),
                 str(tmp_path / "plain" / "signing.pub"))
    assert keygen.returncode == 2
    assert "Traceback" not in keygen.stderr and len(keygen.stderr.strip().splitlines()) == 1
    assert "cannot write the key pair" in keygen.stderr and str(tmp_path / "plain") in keygen.stderr
    missing = cli("edge_agent", "run", "-c", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"cannot read config {tmp_path / 'absent.yaml'}: No such " \
                                      "file or directory"
    for args in (("edge_agent", "-h"), ("edge_agent", "alerts", "-h"),
                 ("edge_agent", "simulate-plc", "-h"), ("converter", "-h"),
                 ("converter", "keygen", "-h"), ("cloud_service", "-h")):
        out = cli(*args)
        assert out.returncode == 0, (args, out.stderr)
        assert "Usage:" in out.stdout, args
    for args, bad in ((("edge_agent", "alerts", "--prot", "1"), "No such option: --prot"),
                      (("cloud_service", "run", "--confg", "x.yaml"), "No such option: --confg"),
                      (("converter", "bogus"), "No such command 'bogus'"),
                      (("edge_agent", "alerts", "--port", "x"), "Invalid value for '--port'")):
        out = cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, (args, out.stderr)
        assert out.stderr.startswith(f"error: {bad}") and "-h'" in out.stderr, out.stderr


@pytest.mark.security
def test_misspelled_environment_variable_is_refused_with_the_nearest_name(monkeypatch):
    from cloud_service.config import load_config as load_cloud
    from edge_agent.config import load_config

    monkeypatch.setenv("PDM_AGENT_BROKR__HOST", "10.0.0.5")
    with pytest.raises(ConfigError) as refused:
        load_config(None, gateway_id="gw-1")
    assert "PDM_AGENT_BROKR__HOST: unknown environment variable; did you mean " \
           "PDM_AGENT_BROKER__HOST?" in str(refused.value)
    monkeypatch.delenv("PDM_AGENT_BROKR__HOST")
    monkeypatch.setenv("PDM_AGENT_OUTBOX__BATCH_MAX_TICK", "5")
    with pytest.raises(ConfigError, match="did you mean PDM_AGENT_OUTBOX__BATCH_MAX_TICKS"):
        load_config(None, gateway_id="gw-1")
    monkeypatch.delenv("PDM_AGENT_OUTBOX__BATCH_MAX_TICK")
    monkeypatch.setenv("PDM_AGENT_UPLINK__HOST", "10.0.0.6")  # a nested optional section
    assert load_config(None, gateway_id="gw-1").uplink_broker.host == "10.0.0.6"

    monkeypatch.setenv("PDM_CLOUD_BROKER__HOTS", "mqtt")
    with pytest.raises(ConfigError, match="did you mean PDM_CLOUD_BROKER__HOST"):
        load_cloud(None, api_token="x" * 16)


@pytest.mark.security
def test_bad_values_are_shown_with_where_they_came_from(monkeypatch, tmp_path):
    from cloud_service.config import load_config as load_cloud
    from edge_agent.config import load_config

    path = tmp_path / "agent.yaml"
    path.write_text("gateway_id: gw-1\noutbox: {batch_max_ticks: 0}\n")
    monkeypatch.setenv("PDM_AGENT_BROKER__PORT", "abc")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    text = str(refused.value)
    assert "broker.port: Input should be a valid integer, unable to parse string as an " \
           "integer (got 'abc', from environment variable PDM_AGENT_BROKER__PORT)" in text
    assert "outbox.batch_max_ticks: Input should be greater than or equal to 1 (got 0, from " \
           f"{path})" in text

    monkeypatch.setenv("PDM_CLOUD_API_TOKEN", "short-secret")  # too short, and never shown
    with pytest.raises(ConfigError) as refused:
        load_cloud(None)
    assert "api_token:" in str(refused.value) and "short-secret" not in str(refused.value)
    assert "(got '**********', from environment variable PDM_CLOUD_API_TOKEN)" in \
        str(refused.value)


@pytest.mark.slow
def test_agent_reads_a_simulated_plc_and_survives_it_going_away(tmp_path, broker, data_dir):
    plc_port, metrics_port = free_port(), free_port()
    plc = track(subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "simulate-plc", "--file",
         str(data_dir / "test_FD001.txt"), "--units", "1-3", "--port", str(plc_port),
         "--rate", "20"], cwd=REPO, stderr=subprocess.PIPE, text=True))
    assert "simulated PLC on 127.0.0.1" in plc.stderr.readline()
    printed = cli("edge_agent", "simulate-plc", "--file", "x", "--units", "1-3", "--port",
                  str(plc_port), "--rate", "20", "--print-config")
    sources = yaml.safe_load(printed.stdout)["sources"]
    assert sources[0]["poll_interval"] == 0.05
    config = agent_config(tmp_path, broker.port, data_dir, sources=sources,
                          metrics_port=metrics_port)
    agent = track(subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "-c", str(config)], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "agent.log").open("w")))
    try:
        ticks = wait_metric(metrics_port, "pdm_edge_ticks_total", lambda v: v >= 60, 40)
        assert ticks is not None and ticks >= 60, (tmp_path / "agent.log").read_text()
        assert metric(metrics_port, 'pdm_edge_source_up{source="modbus-0"}') == 1.0
        assert wait_metric(metrics_port, "pdm_edge_windows_scored_total", lambda v: v > 0)
        plc.terminate()
        plc.wait(10)
        assert wait_metric(metrics_port, 'pdm_edge_source_up{source="modbus-0"}',
                           lambda v: v == 0.0) == 0.0
        assert wait_metric(metrics_port, 'pdm_edge_source_errors_total{reason="connect",'
                           'source="modbus-0"}', lambda v: v >= 1) >= 1
        assert agent.poll() is None
    finally:
        agent.terminate()
        agent.wait(30)
    log = (tmp_path / "agent.log").read_text()
    assert agent.returncode == 0, log
    # the outage is logged at once, with the first failure's reason: "connect" when the PLC
    # was gone between two polls, another (a timeout) when it went away in the middle of one
    assert re.search(rf"ERROR edge_agent.sources.modbus: Modbus server 127.0.0.1:{plc_port} "
                     r"\(modbus-0\) failing: \w+: ", log), log
    assert "Traceback" not in log


def test_environment_sets_scalars_sections_and_lists_as_json(monkeypatch):
    from edge_agent.config import load_config

    monkeypatch.setenv("PDM_AGENT_BROKER", '{"host": "10.0.0.7", "port": 1884}')
    monkeypatch.setenv("pdm_agent_broker__port", "1885")  # names are case-insensitive
    monkeypatch.setenv("PDM_AGENT_BUNDLE__TRUSTED_KEYS", '["/etc/a.pub", "/etc/b.pub"]')
    monkeypatch.setenv("PDM_AGENT_SOURCES", '[{"type": "mqtt"}]')
    cfg = load_config(None, gateway_id="gw-1", broker={"host": "file-host", "keepalive": 40})
    assert (cfg.broker.host, cfg.broker.port, cfg.broker.keepalive) == ("10.0.0.7", 1885, 40)
    assert [str(p) for p in cfg.bundle.trusted_keys] == ["/etc/a.pub", "/etc/b.pub"]
    assert cfg.sources[0].type == "mqtt"
    monkeypatch.setenv("PDM_AGENT_SOURCES", "[{type: mqtt}]")
    with pytest.raises(ConfigError, match="PDM_AGENT_SOURCES: not valid JSON"):
        load_config(None, gateway_id="gw-1")


def test_check_config_connect_names_the_tls_failure(tmp_path, tls_broker, data_dir):
    tls = tls_broker.tls
    config = agent_config(tmp_path, tls_broker.port, data_dir)
    cfg = yaml.safe_load(config.read_text())
    cfg["broker"]["tls"] = {"enabled": True, "cert_file": str(tls.client_cert),
                            "key_file": str(tls.client_key)}  # no ca_file: the system CAs
    config.write_text(yaml.safe_dump(cfg))
    out = cli("edge_agent", "check-config", "--connect", "--timeout", "5", str(config))
    assert out.returncode == 1
    assert out.stdout.strip() == (f"broker 127.0.0.1:{tls_broker.port}: FAILED: TLS: "
                                  "CERTIFICATE_VERIFY_FAILED"), out.stdout + out.stderr
    cfg["broker"]["tls"]["ca_file"] = str(tls.ca)
    config.write_text(yaml.safe_dump(cfg))
    out = cli("edge_agent", "check-config", "--connect", str(config))
    assert out.returncode == 0, out.stdout + out.stderr
