"""The cloud service's pure core and its SQLite store, without a broker or TensorFlow."""

from __future__ import annotations

import json
import os
import zlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_service.config import ConfigError, load_config
from cloud_service.deadletters import DeadLetter, classify
from cloud_service.ingest import decode_message
from cloud_service.metrics import Metrics
from cloud_service.scoring import Scorer
from cloud_service.store import Received, SqliteStore, StatusUpdate
from cloud_service.windows import (
    FeatureMap,
    PendingWindows,
    assemble_windows,
    candidate_range,
    complete_window_ends,
)
from contract import codec
from contract.manifest import Manifest
from contract.payloads import GatewayStatus, UplinkBatch
from contract.preprocess import normalised_window

TOKEN = "test-token-0123456789"
FEATURES = ("s1", "s2", "s3")
W = 5


def manifest(window: int = W, features=FEATURES, **thresholds) -> Manifest:
    return Manifest.model_validate({
        "version": "core-1", "created": "2026-11-23", "source": {"dataset": "x", "files": {}},
        "features": list(features), "window": window,
        "normalisation": {"method": "zscore", "offset": [1.0] * len(features),
                          "scale": [2.0] * len(features)},
        "horizon": 30, "rul_cap": 100.0, "thresholds": {"dwell": 1} | thresholds,
        "edge": {"file": "e.tflite", "quantization": "int8"},
        "files": {"model.keras": "0" * 64, "model_float.tflite": "0" * 64, "e.tflite": "0" * 64},
    })


def batch(first_seq: int, n: int, gateway: str = "gw1", asset: str = "a1", level: float = 0.0,
          features=FEATURES) -> UplinkBatch:
    rng = np.random.default_rng(first_seq)
    values = rng.normal(level, 0.1, (n, len(features))).astype(np.float32)
    prob = np.full(n, 0.3, np.float32)
    prob[: max(0, W - 1 - first_seq)] = np.nan
    return UplinkBatch(gateway=gateway, asset=asset, first_seq=first_seq,
                       timestamps=1_800_000_000.0 + np.arange(first_seq, first_seq + n),
                       features=features, values=values, probability=prob,
                       rul=np.where(np.isnan(prob), np.nan, 50.0).astype(np.float32),
                       model_version="edge-1")


# -- windows -------------------------------------------------------------------------------

def test_complete_windows_need_every_tick_of_the_window():
    seqs = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]
    assert complete_window_ends(seqs, 5).tolist() == [4, 5, 11, 12]
    assert complete_window_ends(seqs, 5, lo=5, hi=11).tolist() == [5, 11]
    assert complete_window_ends([0, 1, 2], 5).tolist() == []
    assert candidate_range(0, 2, 5) == (4, 6)
    assert candidate_range(10, 12, 5) == (10, 16)


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 80), max_size=60), st.integers(2, 8))
def test_complete_windows_match_a_brute_force_check(stored, window):
    seqs = sorted(stored)
    expected = [s for s in seqs if all(t in stored for t in range(s - window + 1, s + 1))]
    assert complete_window_ends(seqs, window).tolist() == expected


def test_assembled_windows_equal_the_contract_preprocessing():
    m = manifest()
    rows = np.random.default_rng(1).normal(size=(12, 3)).astype(np.float32)
    seqs = np.arange(100, 112)
    x, far = assemble_windows(seqs, rows, [104, 111], m)
    assert x.shape == (2, W, 3) and far.tolist() == [False, False]
    np.testing.assert_array_equal(x[0], normalised_window(rows[:5], m))
    np.testing.assert_array_equal(x[1], normalised_window(rows[7:12], m))
    with pytest.raises(ValueError):
        assemble_windows(np.array([1, 2, 4, 5, 6]), rows[:5], [6], m)


def test_feature_map_reorders_and_names_what_is_missing():
    fm = FeatureMap.build(("s3", "s1", "s2", "extra"), FEATURES)
    assert fm.index.tolist() == [1, 2, 0]
    missing = FeatureMap.build(("s1", "s2"), FEATURES)
    assert missing.index is None and missing.missing == ("s3",)


def test_pending_windows_are_taken_across_assets_lowest_seq_first():
    p = PendingWindows()
    p.add(("g", "a"), range(10, 110))
    p.add(("g", "b"), [7, 5, 6])
    p.add(("g", "a"), [10, 11])  # already pending: not counted twice
    assert len(p) == 103
    taken = p.take(10)
    assert taken[("g", "b")] == [5, 6, 7]
    assert taken[("g", "a")] == list(range(10, 17))
    assert len(p) == 93
    rest = p.take(1000)
    assert rest[("g", "a")] == list(range(17, 110)) and len(p) == 0
    for key in (("g", "a"), ("g", "b"), ("g", "c")):
        p.add(key, range(100))
    runs = p.take(30, min_run=16)  # a backlog goes in runs: two assets, not ten windows each
    assert [len(v) for v in runs.values()] == [16, 14] and len(p) == 270


# -- decoding and dead letters ---------------------------------------------------------------

def raw_uplink(body: dict, version: int = 1) -> bytes:
    return bytes([version]) + zlib.compress(msgpack.packb(body, use_bin_type=True))


def body_of(b: UplinkBatch) -> dict:
    return msgpack.unpackb(zlib.decompress(codec.encode_uplink(b)[1:]), raw=False)


def malformed_payloads() -> dict[str, tuple[str, bytes]]:
    """reason -> (topic, payload) for every kind of bad input the service must survive."""
    good = codec.encode_uplink(batch(0, 20))
    nan = body_of(batch(0, 4))
    x = np.frombuffer(nan["x"], "<f4").copy()
    x[5] = np.nan
    nan["x"] = x.tobytes()
    shapes = body_of(batch(0, 4))
    shapes["x"] = shapes["x"][:-4 * 3]
    short_scores = body_of(batch(0, 4))
    short_scores["p"] = short_scores["p"][:-4]
    missing = body_of(batch(0, 4))
    del missing["t"]
    big = body_of(batch(0, 4))
    big["pad"] = os.urandom(300 * 1024)
    return {
        "not-zlib": ("pdm/v1/gw1/uplink", b"\x01" + os.urandom(200)),
        "unknown-version": ("pdm/v1/gw1/uplink", b"\x07" + os.urandom(50)),
        "truncated": ("pdm/v1/gw1/uplink", good[: len(good) // 2]),
        "unknown-version-2": ("pdm/v1/gw1/uplink", b"\x02" + good[1:]),
        "bad-shape": ("pdm/v1/gw1/uplink", raw_uplink(shapes)),
        "bad-shape-2": ("pdm/v1/gw1/uplink", raw_uplink(short_scores)),
        "non-finite": ("pdm/v1/gw1/uplink", raw_uplink(nan)),
        "missing-field": ("pdm/v1/gw1/uplink", raw_uplink(missing)),
        "too-large": ("pdm/v1/gw1/uplink", raw_uplink(big)),
        "gateway-mismatch": ("pdm/v1/gw-other/uplink", good),
        "empty": ("pdm/v1/gw1/uplink", b""),
        "not-msgpack": ("pdm/v1/gw1/uplink", b"\x01" + zlib.compress(b"\xc1\xc1\xc1")),
        "not-json": ("pdm/v1/gw1/status", b"{online"),
        "bad-topic": ("pdm/v1/gw 1/uplink", good),
    }


@pytest.mark.parametrize("case", sorted(malformed_payloads()))
def test_malformed_payloads_become_dead_letters_with_their_reason(case):
    topic, payload = malformed_payloads()[case]
    out = decode_message(topic, payload, 256 * 1024, keep_bytes=64, received_at=1.0)
    assert isinstance(out, DeadLetter), out
    assert out.reason == case.removesuffix("-2"), out.detail
    assert out.size == len(payload) and out.payload == payload[:64]


def test_good_messages_decode_and_empty_retained_status_is_ignored():
    out = decode_message("pdm/v1/gw1/uplink", codec.encode_uplink(batch(3, 7)), 256 * 1024,
                         64, 2.0)
    assert isinstance(out, Received) and out.batch == batch(3, 7)
    status = GatewayStatus(gateway="gw1", online=False, time=5.0)
    out = decode_message("pdm/v1/gw1/status", codec.encode_json(status), 256 * 1024, 64, 2.0)
    assert isinstance(out, StatusUpdate) and out.status == status
    assert decode_message("pdm/v1/gw1/status", b"", 256 * 1024, 64, 2.0) is None


def test_unknown_messages_are_classified_as_invalid():
    assert classify("something nobody expected") == "invalid"


# -- config ----------------------------------------------------------------------------------

def test_config_loads_applies_environment_and_masks_secrets(tmp_path, monkeypatch):
    f = tmp_path / "cloud.yaml"
    f.write_text(f"api_token: {TOKEN}\nbroker: {{host: mqtt.local, password: hunter2}}\n")
    monkeypatch.setenv("PDM_CLOUD_BROKER__PORT", "8883")
    cfg = load_config(f)
    assert (cfg.broker.host, cfg.broker.port) == ("mqtt.local", 8883)
    text = json.dumps(cfg.masked())
    assert TOKEN not in text and "hunter2" not in text and "**********" in text


def test_config_errors_name_the_key_and_reason(tmp_path, monkeypatch):
    monkeypatch.delenv("PDM_CLOUD_API_TOKEN", raising=False)
    f = tmp_path / "cloud.yaml"
    f.write_text("broker: {hots: x, port: 70000}\nscoring: {batch_max: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    msg = str(err.value)
    for expected in ("broker.hots: unknown key", "broker.port:", "scoring.batch_max:",
                     "api_token: required; set it in the file or as PDM_CLOUD_API_TOKEN"):
        assert expected in msg, msg


# -- store and scorer (fake model) -------------------------------------------------------------

class FakeModel:
    """probability = sigmoid(mean of the first normalised feature); counts its calls."""

    def __init__(self, m: Manifest) -> None:
        self.m = m
        self.calls: list[int] = []

    def __call__(self, x: np.ndarray):
        self.calls.append(len(x))
        p = 1 / (1 + np.exp(-4 * x[:, :, 0].mean(axis=1)))
        return p.astype(np.float32), (1 - p).astype(np.float32) * self.m.rul_cap


def scorer_for(store, m: Manifest, batch_max: int = 64):
    published: list[tuple[str, bytes]] = []
    model = FakeModel(m)
    s = Scorer(store, model, m, Metrics(), lambda t, p: published.append((t, p)),
               batch_max=batch_max, max_delay=0)
    return s, model, published


def test_redelivered_batch_changes_nothing(tmp_path):
    store = SqliteStore(tmp_path / "c.db")
    first = store.write_ingest([Received(batch(0, 10), 1.0)], [], [])
    again = store.write_ingest([Received(batch(0, 10), 2.0), Received(batch(5, 10), 2.0)],
                               [], [])
    assert [i.new_rows for i in first] == [10]
    assert [i.new_rows for i in again] == [0, 5]
    asset = store.asset("gw1", "a1")
    assert asset["ticks"] == 15 and asset["last_seq"] == 14
    ticks = store.ticks("gw1", "a1", -1, None, None, None, 100)
    assert [t["seq"] for t in ticks] == list(range(15))
    assert ticks[0]["values"].keys() == set(FEATURES) and ticks[0]["edge_probability"] is None
    store.close()


def test_a_hole_that_never_fills_is_skipped_after_gap_wait(tmp_path):
    store = SqliteStore(tmp_path / "c.db")
    m = manifest()
    now = [100.0]
    scorer = Scorer(store, FakeModel(m), m, Metrics(), lambda t, p: None, max_delay=0,
                    clock=lambda: now[0], gap_wait=30)
    scorer.recover()
    scorer.notify(store.write_ingest([Received(batch(0, 10), 1.0),
                                      Received(batch(15, 10), 1.0)], [], []))
    scorer.drain()
    assert len(store.predictions("gw1", "a1", -1, None, 1000)) == 6
    now[0] += 31
    scorer.drain()
    seqs = [r["seq"] for r in store.predictions("gw1", "a1", -1, None, 1000)]
    assert seqs == list(range(4, 10)) + list(range(19, 25))
    assert scorer.metrics.window_gaps_skipped._value.get() == 1
    # The lost ticks turn up after all: their windows are scored, behind the frontier.
    scorer.notify(store.write_ingest([Received(batch(10, 5), 2.0)], [], []))
    scorer.drain()
    seqs = [r["seq"] for r in store.predictions("gw1", "a1", -1, None, 1000)]
    assert seqs == list(range(4, 25))
    assert store.asset("gw1", "a1")["cloud_seq"] == 24
    store.close()


def test_a_restarted_scorer_finds_unscored_windows_and_keeps_alert_state(tmp_path):
    store = SqliteStore(tmp_path / "c.db")
    m = manifest()
    first, _, published = scorer_for(store, m)
    first.recover()
    first.notify(store.write_ingest([Received(batch(0, 12, level=3.0), 1.0)], [], []))
    first.drain()
    assert [json.loads(p)["new_state"] for _, p in published] == ["CRITICAL"]
    # Ticks stored while no scorer ran (a crash between commit and scoring); the crashed
    # replica's lease has run out by the time it comes back:
    with store._write() as conn:
        conn.execute("UPDATE replicas SET expires_at = 0")
    store.write_ingest([Received(batch(12, 8, level=3.0), 2.0)], [], [])
    second, model, published2 = scorer_for(store, m)
    second.drain()
    assert sum(model.calls) == 8
    assert published2 == []  # still CRITICAL: no new transition
    assert store.asset("gw1", "a1")["cloud_state"] == "CRITICAL"
    assert store.asset("gw1", "a1")["cloud_seq"] == 19
    store.close()


def test_windows_lacking_a_model_feature_are_recorded_unscorable(tmp_path):
    store = SqliteStore(tmp_path / "c.db")
    m = manifest()
    scorer, model, _ = scorer_for(store, m)
    scorer.recover()
    b = batch(0, 6, features=("s1", "s2", "other"))
    scorer.notify(store.write_ingest([Received(b, 1.0)], [], []))
    scorer.drain()
    rows = store.predictions("gw1", "a1", -1, None, 100)
    assert [r["seq"] for r in rows] == [4, 5] and model.calls == []
    assert all(r["probability"] is None and "s3" in r["error"] for r in rows)
    store.close()


def test_status_updates_keep_the_newest(tmp_path):
    store = SqliteStore(tmp_path / "c.db")
    newer = GatewayStatus(gateway="gw1", online=False, time=20.0)
    older = GatewayStatus(gateway="gw1", online=True, time=10.0, model_version="m1")
    store.write_ingest([], [StatusUpdate(newer, 21.0), StatusUpdate(older, 22.0)], [])
    (g,) = store.gateways()
    assert g["online"] == 0 and g["status_time"] == 20.0 and g["last_seen"] == 22.0
    store.close()


def test_canary_picks_a_stable_share_of_at_least_one_gateway():
    from cloud_service.rollouts import canary

    fleet = [f"gw-{i}" for i in range(10)]
    assert len(canary(fleet, 50, "r1")) == 5
    assert len(canary(fleet, 25, "r1")) == 3  # rounded up
    assert len(canary(fleet, 0.1, "r1")) == 1  # never nobody
    assert canary(fleet, 100, "r1") == sorted(fleet)
    assert canary(fleet, 30, "r1") == canary(list(reversed(fleet)), 30, "r1")  # order-free
    picks = {tuple(canary(fleet, 30, f"r{i}")) for i in range(20)}
    assert len(picks) > 10  # different rollouts spread over the fleet
    assert set(canary(fleet, 20, "r1")) <= set(canary(fleet, 40, "r1"))  # a wider canary grows


def test_rollout_request_takes_gateways_or_percent_not_both():
    from pydantic import ValidationError

    from cloud_service.schemas import RolloutRequest

    assert RolloutRequest(version="v2", percent=50).percent == 50
    for bad in ({"version": "v2", "gateways": ["a"], "percent": 10},
                {"version": "v2", "percent": 0}, {"version": "v2", "percent": 101},
                {"version": "v2", "gateways": []}, {"version": "v2", "gateways": ["a/#"]},
                {"version": "bad version"}, {"version": "v2", "extra": 1}):
        with pytest.raises(ValidationError):
            RolloutRequest(**bad)
