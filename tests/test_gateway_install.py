"""The gateway install script, as a dry run into a folder (no users, no systemd)."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import DEFAULT_BUNDLE, REPO


@pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(), reason="no default bundle")
def test_install_dry_run_lays_out_venv_config_and_unit(tmp_path):
    root = tmp_path / "root"
    out = subprocess.run(["bash", str(REPO / "deploy/gateway/install.sh"), "--prefix", str(root)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    unit = (root / "etc/systemd/system/edge-agent.service").read_text()
    assert f"ExecStart={root}/opt/pdm-agent/venv/bin/python -m edge_agent run" in unit
    assert "ProtectSystem=strict" in unit and "User=pdm-agent" in unit
    config = (root / "etc/pdm-agent/agent.yaml").read_text()
    assert "/var/lib/pdm-agent/outbox.db" in config
    assert (root / "opt/pdm-agent/models/default/manifest.json").exists()
    # the venv holds the edge extra and no TensorFlow
    py = root / "opt/pdm-agent/venv/bin/python"
    probe = subprocess.run([str(py), "-c", "import ai_edge_litert, paho.mqtt, edge_agent\n"
                            "import pymodbus, asyncua  # industrial sources\n"
                            "import importlib.util as u; print(u.find_spec('tensorflow'))"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "None", probe.stderr


def test_install_refuses_unknown_options():
    out = subprocess.run(["bash", str(REPO / "deploy/gateway/install.sh"), "--bogus"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "unknown option --bogus" in out.stderr
