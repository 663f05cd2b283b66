"""Hard-example escalation: the agent (a separate process, the real int8 model) sends windows
it is unsure about at once; the cloud (real HTTP app, the real LSTM) answers each with a
verdict on the asset's verdict topic; both count them; normal scoring and storage stay exact."""

from __future__ import annotations

import re
import signal

import httpx
import pytest
import yaml

from contract import codec, topics
from contract.bundle import read_manifest
from contract.payloads import AlertEvent
from tests.conftest import DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY
from tests.support.broker import free_port
from tests.support.mqtt import Recorder
from tests.test_cloud_service import Running, cloud_config, wait_until
from tests.test_edge_agent import GW, start_agent, unit_lengths

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(), reason="no bundle"),
]
UNITS = [31, 34, 68, 81]  # near failure: their scores cross the decision threshold


def metric(text: str, name: str) -> float:
    """Sum of every sample of `name` (all label sets) in a Prometheus text page."""
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text,
                                            re.M))


def replayed_pipeline(data_dir, unit: int, **kw):
    """A pipeline over the default bundle's real edge model, and unit `unit`'s readings."""
    from edge_agent.pipeline import Pipeline
    from edge_agent.readings import Reading
    from edge_agent.scorer import Scorer
    from edge_agent.sources.replay import cmapss_streams

    manifest = read_manifest(DEFAULT_BUNDLE)
    pipeline = Pipeline(GW, manifest, Scorer(DEFAULT_BUNDLE / manifest.edge.file, manifest),
                        **kw)
    rows = cmapss_streams(data_dir / "test_FD001.txt", [unit], "engine-", lambda a: 0)
    readings = [Reading(f"engine-{unit}", float(i), row)
                for i, row in enumerate(rows[f"engine-{unit}"])]
    return pipeline, readings


def test_adopting_agent_decides_escalated_windows_on_the_verdict_else_on_its_own(data_dir):
    # band 0.5 escalates every window, so every decision waits for a verdict
    now = [0.0]
    pipeline, readings = replayed_pipeline(data_dir, 31, escalation_band=0.5, adopt_deadline=2)
    pipeline.gate.clock = lambda: now[0]
    decided = []
    ticks = pipeline.manifest.window + 10  # eleven full windows, whatever the window length
    for seq, reading in enumerate(readings[:ticks]):
        p = pipeline.process(reading)
        p.tick.seq = seq
        decided += pipeline.decide(p)
        assert p.score is None or p.escalate == "near-threshold"
    assert decided == [] and pipeline.holding() == ticks - pipeline.manifest.window + 1
    first = pipeline.manifest.window - 1
    assert pipeline.assets["engine-31"].machine.state.value == "NORMAL"
    # The cloud calls the early windows failing: the edge takes its word (healthy as they
    # look to the int8 model), window by window and in order.
    for seq in range(first, first + 5):
        decided += pipeline.verdict("engine-31", seq, 0.99, 3.0)
    assert [p.tick.seq for p in decided] == list(range(first, first + 5))
    assert all(p.basis == "cloud" and p.judged.probability == 0.99 for p in decided)
    assert any(p.transition for p in decided)
    assert pipeline.assets["engine-31"].machine.state.value == "CRITICAL"
    event = pipeline.alert_event(next(p for p in decided if p.transition), 1.0)
    assert event.basis == "cloud" and event.probability == 0.99
    # No answer for the rest: past the deadline they are decided on the edge's own scores.
    assert pipeline.expire() == []
    now[0] += 2.5
    rest = pipeline.expire()
    assert [p.tick.seq for p in rest] == list(range(first + 5, ticks))
    assert all(p.basis == "edge" and p.judged == p.score for p in rest)
    assert pipeline.holding() == 0


def test_unsure_windows_are_escalated_ahead_of_their_batch_and_answered(
        tmp_path, broker, data_dir):
    manifest = read_manifest(DEFAULT_BUNDLE)
    window, cut = manifest.window, manifest.thresholds.decision
    cloud = Running(cloud_config(tmp_path, broker, DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY))
    rec = Recorder(broker.host, broker.port, [topics.escalate(GW), topics.uplink(GW),
                                              topics.subscription("cloud-alert", GW),
                                              topics.subscription("verdict", GW)])
    port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "gateway_id": GW, "broker": {"host": broker.host, "port": broker.port},
        "sources": [{"type": "cmapss", "file": str(data_dir / "test_FD001.txt"),
                     "units": UNITS, "rate": 40}],
        "bundle": {"path": str(DEFAULT_BUNDLE), "trusted_keys": [str(DEFAULT_BUNDLE_KEY)]},
        "outbox": {"path": str(tmp_path / "outbox.db"), "batch_max_age": 0.5},
        "escalation": {"band": 0.1, "adopt_cloud_verdict": True},
        "metrics_port": port}))
    agent = start_agent(config)
    want = {f"engine-{u}": n for u, n in unit_lengths(data_dir).items() if u in UNITS}
    try:
        def stored(asset: str) -> list[int]:
            items = cloud.http.get(f"/api/v1/assets/{GW}/{asset}/ticks",
                                   params={"limit": 5000}).json()["items"]
            return [t["seq"] for t in items]

        def predicted(asset: str) -> list[int]:
            items = cloud.http.get(f"/api/v1/assets/{GW}/{asset}/predictions",
                                   params={"limit": 5000}).json()["items"]
            return [p["seq"] for p in items]

        wait_until(lambda: all(len(predicted(a)) >= n - window + 1 for a, n in want.items()),
                   120, "every window scored by the cloud")
        escalated = [(i, codec.decode_uplink(m.payload)) for i, m in enumerate(rec.messages)
                     if m.topic == topics.escalate(GW)]
        assert escalated, "no window was escalated"

        def verdicts() -> dict[tuple[str, int], AlertEvent]:
            events = [codec.decode_json(m.payload, AlertEvent) for m in list(rec.messages)
                      if m.topic.endswith("/verdict")]
            assert all(e.kind == "verdict" for e in events)
            return {(e.asset, e.seq): e for e in events}
        asked = {(b.asset, b.seqs[-1]) for _, b in escalated}
        wait_until(lambda: set(verdicts()) >= asked, 30, "a verdict for every escalation")
        wait_until(lambda: metric(httpx.get(f"http://127.0.0.1:{port}/metrics").text,
                                  "pdm_edge_cloud_verdicts_total") >= len(asked), 10,
                   "the agent counted every verdict")
        wait_until(lambda: metric(httpx.get(f"http://127.0.0.1:{port}/metrics").text,
                                  "pdm_edge_escalated_decisions_total") >= len(asked), 10,
                   "the agent decided every escalated window")
        edge = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        cloud_page = cloud.http.get("/metrics").text
        for asset, n in want.items():  # nothing stored twice or lost, each window once
            assert stored(asset) == list(range(n)), asset
            assert predicted(asset) == list(range(window - 1, n)), asset
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
        rec.close()
        cloud.close()

    messages = rec.messages
    for i, batch in escalated:
        # the whole window, flagged, with the edge's scores
        assert batch.escalated and len(batch.timestamps) == window
        end = batch.seqs[-1]
        # ... published before the normal batch that carries its last tick
        carrier = next(j for j, m in enumerate(messages) if m.topic == topics.uplink(GW)
                       and end in (b := codec.decode_uplink(m.payload)).seqs
                       and b.asset == batch.asset)
        assert i < carrier, (batch.asset, end)
    answers = verdicts()
    # cloud-alert carries the cloud alert machine's state changes only: no verdict, no
    # NORMAL -> NORMAL
    changes = [codec.decode_json(m.payload, AlertEvent) for m in messages
               if m.topic.endswith("/cloud-alert")]
    assert all(e.kind == "transition" and e.old_state != e.new_state for e in changes)
    overruled = sum((answers[(b.asset, b.seqs[-1])].probability >= cut)
                    != (b.probability[-1] >= cut) for _, b in escalated)
    assert metric(edge, "pdm_edge_escalations_total") == len(escalated)
    assert metric(edge, "pdm_edge_cloud_verdicts_total") == len(asked)
    # adopting: every escalated window decided once, on the verdict unless it came too late
    on_cloud = metric(edge, 'pdm_edge_escalated_decisions_total{basis="cloud"}')
    assert on_cloud >= 1
    assert metric(edge, "pdm_edge_escalated_decisions_total") == len(asked)
    assert metric(cloud_page, "pdm_cloud_verdicts_total") >= len(asked)
    # every tick stored once; the escalated windows' ticks are the copies received besides
    copies = metric(cloud_page, "pdm_cloud_escalated_ticks_total")
    assert copies == window * len(escalated)
    assert metric(cloud_page, "pdm_cloud_ticks_received_total") == sum(want.values()) + copies
    assert metric(cloud_page, "pdm_cloud_duplicate_ticks_total") == copies
    print(f"\nescalated {len(escalated)} of {sum(n - window + 1 for n in want.values())} "
          f"windows; the cloud overruled {overruled}; {on_cloud:.0f} decided on its verdict")
