"""`scripts/demo.py` end to end for a few seconds: the summary's figures add up."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contract.bundle import read_manifest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()),
    reason="the demo needs Mosquitto")


def figure(text: str, pattern: str) -> int:
    found = re.search(pattern, text)
    assert found, (pattern, text[-3000:])
    return int(found.group(1))


def test_the_demo_summary_adds_up(tmp_path):
    run = subprocess.run(
        [sys.executable, "scripts/demo.py", "--units", "34,68", "--rate", "50", "--duration",
         "15", "--workdir", str(tmp_path / "demo")],
        cwd=REPO, capture_output=True, text=True, timeout=150)
    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
    expected = 203 + 187  # cycles of FD001 test engines 34 and 68
    assert f"({expected} ticks in all" in out
    assert re.search(r"edge metrics: +http://127\.0\.0\.1:\d+/metrics", out), out
    assert re.search(r"web UI: +http://127\.0\.0\.1:\d+/ ", out), out
    # The progress line stops once every tick is in the cloud's store.
    progress = out.split("Ctrl-C stops everything.", 1)[1].split("\nSummary", 1)[0]
    assert f"the replay has ended: all {expected} ticks" in progress, progress
    after_end = progress.split("the replay has ended", 1)[1]
    assert "  ticks " not in after_end, progress

    summary = out.split("\nSummary", 1)[1]
    edge = figure(summary, r"edge: +(\d+) ticks")
    stored = figure(summary, r"cloud: +(\d+) ticks stored")
    received = figure(summary, r"uplink: (\d+) ticks received")
    copies = figure(summary, r"stored \+ (\d+) copies")
    ahead = figure(summary, r"\((\d+) in escalated windows")
    resent = figure(summary, r"(\d+) resent or replayed")
    escalations = figure(summary, r"escalation: (\d+) windows sent")
    assert edge == stored == expected, summary
    assert received == stored + copies and copies == ahead + resent, summary
    window = read_manifest(REPO / "models" / "default").window
    assert ahead == window * escalations, summary  # each escalated window carries W ticks
    assert figure(summary, r"(\d+) not in the cloud yet") == 0, summary
    assert re.search(r"the first edge alert came \d+\.\d s after the agent started", summary)
