"""Payload semantics (issue 15): what a well-formed but lying uplink batch or raw reading
could do, each refused with its own reason, in the decoder, in the ingest's dead letters and
through a real broker into the running cloud service."""

from __future__ import annotations

import json
import math
import time
import zlib

import msgpack
import numpy as np
import pytest

from cloud_service.deadletters import REASONS, DeadLetter, classify
from cloud_service.ingest import decode_message
from contract import codec, topics
from contract.errors import ContractError
from contract.payloads import AlertEvent, GatewayStatus
from edge_agent.readings import Reading, ReadingChecker, Rejected
from edge_agent.sources.mqtt_input import parse_raw

pytestmark = pytest.mark.security


def pack(body: dict) -> bytes:
    return bytes([codec.UPLINK_VERSION]) + zlib.compress(msgpack.packb(body, use_bin_type=True))


def f8(*v: float) -> bytes:
    return np.array(v, "<f8").tobytes()


def f4(*v: float) -> bytes:
    return np.array(v, "<f4").tobytes()


def body(**over) -> dict:
    """A valid two-tick, two-feature batch from gateway gw1, with fields replaced."""
    good = {"g": "gw1", "a": "a1", "s": 0, "f": ["s1", "s2"], "t": f8(1.8e9, 1.8e9 + 1),
            "x": f4(1, 2, 3, 4), "p": f4(math.nan, 0.3), "r": f4(math.nan, 80.0), "m": "v1"}
    return {**good, **over}


# Every attack the issue lists: (case, msgpack fields replaced, reason label, words in detail)
ATTACKS = [
    ("seq-bool", {"s": True}, "bad-seq", "must be an integer, not bool"),
    ("seq-float", {"s": 1.0}, "bad-seq", "must be an integer, not float"),
    ("seq-negative", {"s": -1}, "bad-seq", "first_seq"),
    ("seq-2^53", {"s": 2**53}, "bad-seq", "first_seq"),
    ("last-seq-2^53", {"s": 2**53 - 1}, "bad-seq", "last seq 9007199254740992 reaches 2^53"),
    ("probability-2", {"p": f4(0.5, 2.0)}, "bad-probability", "probability has values outside"),
    ("probability-negative", {"p": f4(-0.1, 0.5)}, "bad-probability", "outside [0, 1]"),
    ("shadow-probability", {"sv": "v2", "sp": f4(0.1, 1.5), "sr": f4(1, 1)}, "bad-probability",
     "shadow_probability has values outside"),
    ("rul-negative", {"r": f4(math.nan, -5.0)}, "bad-rul", "rul (remaining useful life) has"),
    ("rul-infinite", {"r": f4(math.inf, 5.0)}, "non-finite", "rul contains infinity"),
    ("escalated-no", {"e": "no"}, "not-boolean", "escalated"),
    ("escalated-1", {"e": 1}, "not-boolean", "escalated"),
    ("escalated-nil", {"e": None}, "not-boolean", "escalated"),
    ("feature-empty", {"f": ["", "s2"]}, "bad-feature-name", "feature name '' is 0 characters"),
    ("feature-100k", {"f": ["x" * 100_000, "s2"]}, "bad-feature-name", "100000 characters"),
    ("features-300", {"f": [f"s{i}" for i in range(300)], "x": f4(*range(600))},
     "bad-feature-name", "features has 300 names, at most 256"),
    ("features-not-names", {"f": ["s1", 2]}, "bad-feature-name", "list of names"),
    ("time-backwards", {"t": f8(1.8e9, 1.8e9 - 1)}, "bad-time", "timestamps go backwards"),
    ("time-negative", {"t": f8(-1.0, 0.0)}, "bad-time", "outside the plausible range"),
    ("time-milliseconds", {"t": f8(1.8e12, 1.8e12 + 1000)}, "bad-time", "plausible range"),
    ("time-nan", {"t": f8(math.nan, 1.8e9)}, "non-finite", "timestamps contains NaN"),
]


def test_every_reason_is_listed_for_the_api():
    for _, _, reason, _ in ATTACKS:
        assert reason in REASONS


@pytest.mark.parametrize("case, over, reason, words", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_uplink_attack_is_refused_with_its_reason(case, over, reason, words):
    with pytest.raises(ContractError) as err:
        codec.decode_uplink(pack(body(**over)))
    assert words in str(err.value)
    assert classify(str(err.value)) == reason, str(err.value)
    dead = decode_message(topics.uplink("gw1"), pack(body(**over)), 256 * 1024, 64, 1.0)
    assert isinstance(dead, DeadLetter) and dead.reason == reason and dead.gateway == "gw1"


def test_the_edges_of_the_ranges_are_accepted():
    ok = codec.decode_uplink(pack(body(s=2**53 - 2, p=f4(0.0, 1.0), r=f4(0.0, 0.0), e=True,
                                       t=f8(1.8e9, 1.8e9), f=["x" * 64, "s2"])))
    assert ok.seqs[-1] == 2**53 - 1 and ok.escalated is True
    assert codec.decode_uplink(pack(body(e=False))).escalated is False
    names = [f"s{i}" for i in range(256)]
    assert codec.decode_uplink(pack(body(f=names, x=f4(*range(512))))).features == tuple(names)


def test_json_payloads_take_no_lax_booleans_or_seqs():
    status = {"gateway": "gw1", "online": "no", "time": 1.0}
    with pytest.raises(ContractError, match="online"):
        codec.decode_json(json.dumps(status).encode(), GatewayStatus)
    dead = decode_message(topics.status("gw1"), json.dumps(status).encode(), 4096, 64, 1.0)
    assert isinstance(dead, DeadLetter) and dead.reason == "not-boolean"
    alert = dict(source="edge", gateway="gw", asset="a1", old_state="NORMAL",
                 new_state="WARNING", probability=0.7, thresholds={}, model_version="v1",
                 tick_time=1.0, published_at=2.0)
    for seq in (True, 1.5, 2**53):
        with pytest.raises(ContractError, match="seq"):
            codec.decode_json(json.dumps({**alert, "seq": seq}).encode(), AlertEvent)


# --- the edge's raw readings ------------------------------------------------------------

RAW = "pdm/v1/gw1/pump-1/raw"


@pytest.mark.parametrize("payload, words", [
    (b'{"time": 1.0, "values": {"": 1}}', "feature name '' is 0 characters"),
    (json.dumps({"time": 1.0, "x" * 100_00: 1}).encode(), "10000 characters long"),
    (json.dumps({"time": 1.0, "values": {f"s{i}": 1 for i in range(300)}}).encode(),
     "300 features, at most 256"),
])
def test_raw_payload_with_bad_feature_names_is_refused(payload, words):
    with pytest.raises(ValueError, match=words):
        parse_raw(RAW, payload)


@pytest.mark.parametrize("payload, reason, words", [
    (b'{"time": -1, "a": 1}', "bad_time", "outside the plausible range"),
    (b'{"time": 1732350000500, "a": 1}', "bad_time", "outside the plausible range"),
    (b'{"time": true, "a": 1}', "bad_time", "not a finite number"),
    (b'{"time": 1e999, "a": 1}', "bad_time", "not a finite number"),
    (b'{"time": 1' + b"0" * 400 + b', "a": 1}', "bad_time", "not a finite number"),
    (b'{"time": 5, "a": 1' + b"0" * 400 + b'}', "not_finite", "not a finite float32"),
    (b'{"time": 5, "a": 1e39}', "not_finite", "not a finite float32"),
    (b'{"time": 5, "a": false}', "not_a_number", "not a number"),
])
def test_raw_reading_with_bad_numbers_is_rejected_not_crashing(payload, reason, words):
    reading = parse_raw(RAW, payload)
    with pytest.raises(Rejected, match=words) as err:
        ReadingChecker(["a"]).check(reading)
    assert err.value.reason == reason
    assert len(str(err.value)) < 200  # a sender does not choose the size of our log lines


def test_plausible_raw_readings_pass():
    checker = ReadingChecker(["a"])
    assert checker.check(parse_raw(RAW, b'{"time": 0, "a": 3.4e38}')).tolist() == [
        pytest.approx(3.4e38)]
    assert checker.check(Reading("pump-1", time.time(), {"a": 2**70})).dtype == np.float32


# --- through the running cloud service ------------------------------------------------------

def test_attacks_sent_through_a_real_broker_end_as_counted_dead_letters(tmp_path, broker,
                                                                       bundle_for_security):
    from tests.test_cloud_service import AUTH, Publisher, Running, cloud_config, wait_until

    folder, pub = bundle_for_security
    cloud = Running(cloud_config(tmp_path, broker, folder, pub))
    sender = Publisher(broker)
    try:
        for _, over, _, _ in ATTACKS:
            sender.send(topics.uplink("gw1"), pack(body(**over)))
        sender.send(topics.uplink("gw1"), pack(body(a="good")))  # still stored after them

        def letters() -> list[dict]:
            return cloud.http.get("/api/v1/dead-letters", headers=AUTH,
                                  params={"limit": 500}).json()["items"]

        wait_until(lambda: len(letters()) == len(ATTACKS), 30, "a dead letter per attack")
        wait_until(lambda: cloud.http.get("/api/v1/assets/gw1/good").status_code == 200, 30,
                   "the good batch")
        got = sorted((d["reason"], d["topic"]) for d in letters())
        assert got == sorted((a[2], "pdm/v1/gw1/uplink") for a in ATTACKS)
        assert cloud.http.get("/api/v1/assets/gw1/a1").status_code == 404  # nothing stored
        metrics = cloud.http.get("/metrics").text
        for reason in {a[2] for a in ATTACKS}:
            n = sum(a[2] == reason for a in ATTACKS)
            assert f'pdm_cloud_dead_letters_total{{reason="{reason}"}} {n}.0' in metrics, reason
    finally:
        sender.close()
        cloud.close()


@pytest.fixture(scope="module")
def bundle_for_security(tmp_path_factory):
    from tests.support.cloud import make_bundle
    from tests.test_cloud_service import FEATURES, W

    root = tmp_path_factory.mktemp("bundle")
    return make_bundle(root / "test-1", root / "keys", window=W, features=FEATURES)
