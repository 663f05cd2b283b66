"""The agent's pure core and its SQLite outbox: no broker, no model needed."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from contract.manifest import EdgeModel, Manifest, Normalisation, Source
from contract.preprocess import sliding_windows
from edge_agent.config import ConfigError, load_config
from edge_agent.outbox import Outbox, OutboxTick
from edge_agent.readings import Reading, ReadingChecker, Rejected
from edge_agent.sources.mqtt_input import parse_raw
from edge_agent.sources.replay import cmapss_streams, csv_rows
from edge_agent.windows import AssetWindow

FEATURES = ["a", "b", "c"]


def manifest(window: int = 4) -> Manifest:
    files = {"model.keras": "0" * 64, "model_float.tflite": "0" * 64, "model_int8.tflite": "0" * 64}
    return Manifest(
        version="t1", created="2026-01-01T00:00:00Z", source=Source(dataset="x", files={}),
        features=FEATURES, window=window,
        normalisation=Normalisation(method="minmax", offset=[0, 10, -1], scale=[1, 2, 4]),
        horizon=30, rul_cap=125, edge=EdgeModel(file="model_int8.tflite", quantization="int8"),
        files=files)


# --- readings ----------------------------------------------------------------------------
@pytest.mark.parametrize("values, reason, words", [
    ({"a": 1, "b": 2}, "missing_feature", "missing feature c"),
    ({"a": 1, "b": "x", "c": 3}, "not_a_number", "feature b is not a number"),
    ({"a": 1, "b": float("nan"), "c": 3}, "not_finite", "feature b is nan"),
    ({"a": 1, "b": 2, "c": float("inf")}, "not_finite", "feature c is inf"),
    ({"a": True, "b": 2, "c": 3}, "not_a_number", "feature a is not a number"),
])
def test_checker_refuses_bad_values_naming_asset_and_reason(values, reason, words):
    with pytest.raises(Rejected) as err:
        ReadingChecker(FEATURES).check(Reading("pump-1", 1.0, values))
    assert err.value.reason == reason
    assert words in str(err.value) and "pump-1" in str(err.value)


def test_checker_refuses_time_going_backwards_and_bad_asset():
    checker = ReadingChecker(FEATURES)
    ok = {"a": 1, "b": 2, "c": 3}
    row = checker.check(Reading("p1", 5.0, {**ok, "extra": "ignored"}))
    assert row.tolist() == [1, 2, 3]
    for t in (5.0, 4.0):
        with pytest.raises(Rejected, match="not after the previous 5.0") as err:
            checker.check(Reading("p1", t, ok))
        assert err.value.reason == "time_backwards"
    checker.check(Reading("p2", 1.0, ok))  # each asset has its own clock
    with pytest.raises(Rejected) as err:
        checker.check(Reading("p/1", 9.0, ok))
    assert err.value.reason == "bad_asset"
    with pytest.raises(Rejected) as err:
        checker.check(Reading("p1", math.nan, ok))
    assert err.value.reason == "bad_time"


# --- window ------------------------------------------------------------------------------
def test_window_matches_sliding_windows_of_the_series():
    m = manifest(window=4)
    rng = np.random.default_rng(0)
    series = rng.normal(size=(23, 3)).astype(np.float32)
    expected = sliding_windows(series, 4)
    w = AssetWindow(m)
    got = []
    for i, row in enumerate(series):
        w.push(row)
        assert w.full == (i >= 3)
        if w.full:
            got.append(w.view().copy())
    np.testing.assert_allclose(np.stack(got), expected, rtol=1e-6)


def test_window_copy_carries_each_ticks_time_and_scores_across_compactions():
    m = manifest(window=4)
    w = AssetWindow(m)
    for i in range(11):  # compacts twice
        w.push(np.full(3, i, np.float32), time=100.0 + i)
        if i % 2:
            w.score_last(i / 10, 50.0 - i)
    c = w.copy()
    np.testing.assert_array_equal(c.times, [107, 108, 109, 110])
    np.testing.assert_array_equal(c.values[:, 0], [7, 8, 9, 10])
    np.testing.assert_allclose(c.probability, [0.7, np.nan, 0.9, np.nan])
    np.testing.assert_allclose(c.rul, [43, np.nan, 41, np.nan])
    w.push(np.zeros(3, np.float32), time=111.0)
    assert c.times[-1] == 110  # a copy, not a view


# --- outbox ------------------------------------------------------------------------------
def ticks(asset: str, n: int, start: float = 0.0) -> list[OutboxTick]:
    return [OutboxTick(asset, start + i, np.full(3, i, np.float32), 0.5, 100.0 - i, "v1")
            for i in range(n)]


def test_outbox_assigns_per_asset_seqs_that_survive_reopening(tmp_path):
    path = tmp_path / "outbox.db"
    ob = Outbox(path, 10**8, 3)
    ob.append(ticks("a", 3) + ticks("b", 2))
    ob.append(ticks("a", 2, 10))
    assert ob.pending_counts() == {"a": 5, "b": 2}
    ob.close()
    ob = Outbox(path, 10**8, 3)
    assert (ob.next_seq("a"), ob.next_seq("b"), ob.next_seq("c")) == (5, 2, 0)
    batch = ob.take("a", -1, 4)
    assert (batch.first_seq, batch.last_seq) == (0, 3)
    assert batch.times.tolist() == [0, 1, 2, 10]
    assert batch.values[3].tolist() == [0, 0, 0]
    ob.ack("a", 0, 3)
    rest = ob.take("a", -1, 100)
    assert (rest.first_seq, rest.last_seq) == (4, 4)
    assert ob.take("a", 4, 100) is None
    ob.ack("a", 4, 4)
    ob.close()
    ob = Outbox(path, 10**8, 3)  # acknowledged ticks are gone for good; seqs keep counting
    assert ob.pending_counts() == {"b": 2}
    ob.append(ticks("a", 1, 20))
    assert ob.take("a", -1, 10).first_seq == 5


def test_outbox_replays_recently_acknowledged_ticks_after_a_reconnect(tmp_path):
    ob = Outbox(tmp_path / "o.db", 10**8, 3, replay_window=60)
    ob.append(ticks("a", 5))
    ob.ack("a", 0, 2)
    assert ob.pending_counts() == {"a": 2} and ob.depth() == 2
    assert ob.replay_recent() == 3
    assert ob.take("a", -1, 10).first_seq == 0 and ob.depth() == 5
    old = Outbox(tmp_path / "o2.db", 10**8, 3, replay_window=0)
    old.append(ticks("a", 3))
    old.ack("a", 0, 2)
    time.sleep(0.01)
    old.ack("a", 0, 0)  # acknowledging prunes what left the window
    assert old.replay_recent() == 0 and old.depth() == 0


def test_outbox_batches_break_at_a_model_change_and_keep_nan_scores(tmp_path):
    ob = Outbox(tmp_path / "o.db", 10**8, 3)
    t = ticks("a", 4)
    t[0].probability = float("nan")
    t[2].model_version = t[3].model_version = "v2"
    ob.append(t)
    first = ob.take("a", -1, 10)
    assert (first.first_seq, first.last_seq, first.model_version) == (0, 1, "v1")
    assert math.isnan(first.probability[0]) and first.probability[1] == 0.5
    assert ob.take("a", first.last_seq, 10).model_version == "v2"


def test_outbox_drops_oldest_ticks_beyond_its_budget_and_counts_them(tmp_path):
    ob = Outbox(tmp_path / "o.db", 256 * 1024, 3)
    for k in range(30):
        ob.append(ticks("a", 500, k * 500))
    assert ob.dropped() > 0
    assert ob.used_bytes() <= 256 * 1024 + 64 * 1024
    first = ob.take("a", -1, 1)
    assert first.first_seq == ob.dropped()  # the oldest went first, the rest are consecutive


# --- sources -----------------------------------------------------------------------------
def test_raw_mqtt_payloads_parse_or_say_why():
    r = parse_raw("pdm/v1/gw1/pump-7/raw", b'{"time": 3.5, "values": {"a": 1}}')
    assert (r.asset, r.time, r.values) == ("pump-7", 3.5, {"a": 1})
    flat = parse_raw("pdm/v1/gw1/p/raw", b'{"time": 1, "a": 2, "b": 3}')
    assert flat.values == {"a": 2, "b": 3}
    for payload, words in [(b"not json", "not JSON"), (b"[1]", "JSON object"),
                           (b'{"values": {}}', "'time'"),
                           (b'{"time": 1, "values": [1]}', "'values' must be")]:
        with pytest.raises(ValueError, match=words):
            parse_raw("pdm/v1/gw1/p/raw", payload)
    with pytest.raises(ValueError, match="not a known"):
        parse_raw("pdm/v1/gw1/raw", b"{}")


def test_cmapss_streams_resume_after_the_ticks_already_taken(data_dir):
    streams = cmapss_streams(data_dir / "test_FD001.txt", [1, 2], "engine-",
                             skip=lambda asset: 5 if asset == "engine-1" else 0)
    first = next(streams["engine-1"])
    assert first["cycle"] == 6 and "sensor_2" in first
    assert next(streams["engine-2"])["cycle"] == 1
    with pytest.raises(ValueError, match="no unit"):
        cmapss_streams(data_dir / "test_FD001.txt", [101], "e", lambda a: 0)


def test_cmapss_streams_loop_from_the_first_cycle_when_a_unit_ends(data_dir):
    """Unit 1 has 31 cycles: a looping stream resumed after 40 ticks is 9 into its 2nd lap."""
    looping = cmapss_streams(data_dir / "test_FD001.txt", [1], "engine-", lambda a: 40,
                             loop=True)["engine-1"]
    cycles = [int(next(looping)["cycle"]) for _ in range(31)]
    assert cycles == [*range(10, 32), *range(1, 10)]
    once = cmapss_streams(data_dir / "test_FD001.txt", [1], "engine-", lambda a: 29)
    assert [int(row["cycle"]) for row in once["engine-1"]] == [30, 31]


def test_csv_rows_parse_numbers_and_name_missing_columns(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("machine,t,a,b\nm1,1,0.5,oops\n")
    # the time stays among the values too: a model may take operating time as an input
    assert list(csv_rows(f, "machine", "t")) == [("m1", 1.0, {"t": 1.0, "a": 0.5, "b": "oops"})]
    with pytest.raises(ValueError, match="no column 'asset'"):
        list(csv_rows(f, "asset", "t"))


# --- config ------------------------------------------------------------------------------
def test_config_errors_name_the_key_path_and_reason(tmp_path):
    f = tmp_path / "agent.yaml"
    f.write_text("gateway_id: gw-1\nbroker: {host: x, prot: 1}\n"
                 "sources: [{type: cmapss, file: f.txt, rate: -2}]\noutbox: {max_bytes: 10}\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    text = str(err.value)
    assert "broker.prot: unknown key" in text
    assert "sources.0.cmapss.rate" in text and "greater than or equal to 0" in text
    assert "outbox.max_bytes" in text
    f.write_text("gateway_id: 'gw#1'\n")
    with pytest.raises(ConfigError, match="gateway_id.*contains '#'"):
        load_config(f)
    f.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(f)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_environment_overrides_the_file_and_secrets_are_masked(tmp_path, monkeypatch):
    f = tmp_path / "agent.yaml"
    f.write_text("gateway_id: gw-1\nbroker: {host: a, port: 1883, password: hunter2}\n")
    monkeypatch.setenv("PDM_AGENT_BROKER__PORT", "8883")
    cfg = load_config(f)
    assert (cfg.broker.host, cfg.broker.port) == ("a", 8883)
    assert "hunter2" not in str(cfg.masked())
    assert cfg.broker.password.get_secret_value() == "hunter2"


# --- escalation ----------------------------------------------------------------------------
def test_escalation_picks_windows_near_the_threshold_or_with_disagreeing_heads():
    from edge_agent.escalation import escalation_reason

    m = manifest()  # decision 0.5, horizon 30
    assert escalation_reason(0.55, 20.0, m, band=0.1) == "near-threshold"
    assert escalation_reason(0.41, 90.0, m, band=0.1) == "near-threshold"
    assert escalation_reason(0.39, 90.0, m, band=0.1) is None  # sure: healthy
    assert escalation_reason(0.95, 5.0, m, band=0.1) is None  # sure: failing
    assert escalation_reason(0.95, 80.0, m, band=0.1) == "heads-disagree"
    assert escalation_reason(0.05, 10.0, m, band=0.1) == "heads-disagree"
    assert escalation_reason(0.05, 10.0, m, band=0.1, check_heads=False) is None
    assert escalation_reason(0.5, 10.0, m, band=0.0) is None  # band 0: heads only


def test_verdict_ledger_counts_agreement_overrules_and_late_answers():
    from edge_agent.escalation import VerdictLedger

    now = [100.0]
    ledger = VerdictLedger(deadline=2.0, max_pending=3, clock=lambda: now[0])
    ledger.sent("e1", 40, True)
    ledger.sent("e1", 41, False)
    ledger.sent("e2", 40, True)
    now[0] += 0.5
    assert ledger.received("e1", 40, True).outcome == "agreed"
    assert ledger.received("e1", 40, True) is None  # answered once only
    assert ledger.received("e1", 41, True).outcome == "overruled"
    assert ledger.received("e9", 1, True) is None  # never escalated here
    now[0] += 5
    late = ledger.received("e2", 40, True)
    assert late.outcome == "late" and late.latency == pytest.approx(5.5)
    for seq in range(5):  # bounded when the cloud never answers
        ledger.sent("e3", seq, True)
    assert len(ledger) == 3 and ledger.received("e3", 0, True) is None


def test_verdict_gate_holds_an_asset_behind_its_escalated_window_until_verdict_or_deadline():
    from edge_agent.verdict_gate import CloudScore, VerdictGate

    now = [0.0]
    gate = VerdictGate(deadline=2.0, clock=lambda: now[0])

    def items(released):
        return [(r.item, r.cloud.probability if r.cloud else None) for r in released]

    assert items(gate.offer("e1", 10, "e1-10", escalated=False)) == [("e1-10", None)]
    assert gate.offer("e1", 11, "e1-11", escalated=True) == []  # waits for the cloud
    assert gate.offer("e1", 12, "e1-12", escalated=False) == []  # behind it, in order
    assert gate.offer("e1", 13, "e1-13", escalated=True) == []
    assert items(gate.offer("e2", 11, "e2-11", escalated=False)) == [("e2-11", None)]
    assert gate.verdict("e1", 13, CloudScore(0.2, 90.0)) == []  # answered, but not first yet
    assert gate.verdict("e9", 1, CloudScore(0.9, 5.0)) == []  # never held here
    assert len(gate) == 3
    assert items(gate.verdict("e1", 11, CloudScore(0.9, 5.0))) == [
        ("e1-11", 0.9), ("e1-12", None), ("e1-13", 0.2)]
    assert len(gate) == 0

    assert gate.offer("e1", 14, "e1-14", escalated=True) == []
    assert gate.offer("e1", 15, "e1-15", escalated=False) == []
    now[0] += 1.9
    assert gate.expire() == []
    now[0] += 0.2  # past the deadline: the edge decides on its own score
    assert items(gate.expire()) == [("e1-14", None), ("e1-15", None)]
    assert gate.verdict("e1", 14, CloudScore(0.9, 5.0)) == []  # too late to count

    gate.offer("e3", 1, "e3-1", escalated=True)
    gate.offer("e3", 2, "e3-2", escalated=False)
    assert items(gate.flush()) == [("e3-1", None), ("e3-2", None)] and len(gate) == 0


def _state(gateway: str, asset: str, state: str = "NORMAL"):
    from contract.payloads import AlertState, AssetState

    return AssetState(gateway=gateway, asset=asset, state=AlertState(state), probability=0.1,
                      rul=100.0, model_version="m-1", seq=40, tick_time=1.0, since=1.0)


def _event(gateway: str, asset: str, old: str, new: str, source: str = "cloud", seq: int = 50):
    from contract.payloads import AlertEvent, AlertState

    return AlertEvent(source=source, gateway=gateway, asset=asset, old_state=AlertState(old),
                      new_state=AlertState(new), probability=0.9, rul=12.0,
                      thresholds={"decision": 0.5}, model_version="m-1", seq=seq,
                      tick_time=2.0, published_at=2.0)


def test_the_viewer_counts_every_asset_it_has_seen_whichever_message_named_it():
    """The demo's viewer said "22 assets" while 100 ran: it counted retained states only."""
    from contract import codec, topics
    from edge_agent.viewer import AlertBoard

    board = AlertBoard(history=10)
    for i in range(22):  # assets with a retained state on this broker
        board.feed(topics.state("gw-1", f"e{i}"), codec.encode_json(_state("gw-1", f"e{i}")))
    for i in range(15, 100):  # cloud alerts: 7 about assets with a state, 78 about others
        board.feed(topics.cloud_alert("gw-1", f"e{i}"),
                   codec.encode_json(_event("gw-1", f"e{i}", "NORMAL", "WARNING")))
    board.feed(topics.alert("gw-2", "e0"),  # the same asset id on another gateway
               codec.encode_json(_event("gw-2", "e0", "NORMAL", "CRITICAL", source="edge")))
    board.feed(topics.cloud_alert("gw-1", "e99"),  # a later event about a known asset
               codec.encode_json(_event("gw-1", "e99", "WARNING", "CRITICAL", seq=60)))
    assert len(board.assets) == 101 and len(board.events) == 10
    rows = board.rows()
    assert len(rows) == 101 and len({(r.gateway, r.asset) for r in rows}) == 101
    assert "(101 assets)" in str(board.table().title) and board.table().row_count == 101
    by_key = {(r.gateway, r.asset): r for r in rows}
    # a retained state wins over an event; else the latest event says the state
    assert by_key[("gw-1", "e20")].seen_in == "state"
    assert by_key[("gw-1", "e20")].state.value == "NORMAL"
    assert by_key[("gw-1", "e50")].seen_in == "cloud-alert"
    assert by_key[("gw-1", "e50")].state.value == "WARNING"
    assert by_key[("gw-1", "e99")].state.value == "CRITICAL" and by_key[("gw-1", "e99")].seq == 60
    assert by_key[("gw-2", "e0")].seen_in == "alert"
    # the most urgent first
    assert [r.state.value for r in rows[:2]] == ["CRITICAL", "CRITICAL"]
    assert rows[-1].state.value == "NORMAL"
