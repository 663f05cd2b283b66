"""The shared contract: topics, payload round-trips and rejections, bundle signatures."""

from __future__ import annotations

import json
import math
import shutil
import zlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract import codec, topics
from contract.bundle import generate_keypair, pack_bundle, sign_bundle, unpack_bundle, verify_bundle
from contract.errors import ContractError
from contract.payloads import (
    AlertEvent,
    AlertState,
    AssetState,
    GatewayStatus,
    ModelAnnouncement,
    UpdateReport,
    UplinkBatch,
)
from tests.conftest import DEFAULT_BUNDLE
from tests.support.bundles import flip_byte

ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e12,
                   max_value=1e12)
states = st.sampled_from(list(AlertState))
versions = st.from_regex(r"[A-Za-z0-9._+-]{1,64}", fullmatch=True)


# --------------------------------------------------------------------------- topics

@given(ids, ids)
def test_topics_round_trip(gateway, asset):
    for kind, build in (("status", topics.status), ("uplink", topics.uplink),
                        ("model", topics.model), ("update", topics.update)):
        parsed = topics.parse(build(gateway))
        assert (parsed.gateway, parsed.kind, parsed.asset) == (gateway, kind, None)
    for kind, build in (("raw", topics.raw), ("alert", topics.alert), ("state", topics.state),
                        ("cloud-alert", topics.cloud_alert), ("verdict", topics.verdict)):
        topic = build(gateway, asset)
        assert topic.count("/") <= 6  # AWS IoT allows 7 levels
        parsed = topics.parse(topic)
        assert (parsed.gateway, parsed.kind, parsed.asset) == (gateway, kind, asset)


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "gw+1", "a#", "x" * 65, "émile", " gw",
                                 None, 7])
def test_bad_ids_are_refused_with_a_clear_error(bad):
    with pytest.raises(ContractError, match="gateway"):
        topics.uplink(bad)
    with pytest.raises(ContractError, match="asset"):
        topics.alert("gw", bad)


@pytest.mark.parametrize("topic", ["pdm/v2/gw/status", "pdm/v1/gw", "pdm/v1/gw/a/b/alert",
                                   "pdm/v1/gw/unknown", "pdm/v1/+/uplink", "other/gw/status"])
def test_foreign_topics_do_not_parse(topic):
    with pytest.raises(ContractError):
        topics.parse(topic)


def test_subscriptions_and_shared_groups():
    assert topics.subscription("uplink") == "pdm/v1/+/uplink"
    assert topics.subscription("state", asset="+") == "pdm/v1/+/+/state"
    assert topics.shared("cloud", "pdm/v1/+/uplink") == "$share/cloud/pdm/v1/+/uplink"
    with pytest.raises(ContractError):
        topics.shared("a/b", "pdm/v1/+/uplink")


# --------------------------------------------------------------------------- JSON payloads

alert_events = st.builds(
    AlertEvent, source=st.sampled_from(["edge", "cloud"]), gateway=ids, asset=ids,
    old_state=states, new_state=states, probability=finite, rul=st.none() | finite,
    thresholds=st.dictionaries(st.sampled_from(["warning_enter", "critical_enter"]), finite),
    model_version=versions, seq=st.integers(0, 2**53 - 1), tick_time=finite, published_at=finite,
    latency_ms=st.none() | finite)
asset_states = st.builds(AssetState, gateway=ids, asset=ids, state=states, probability=finite,
                         rul=st.none() | finite, model_version=versions,
                         seq=st.integers(0, 2**53 - 1), tick_time=finite, since=finite)
statuses = st.builds(GatewayStatus, gateway=ids, online=st.booleans(), time=finite,
                     model_version=st.none() | versions)
ordered_versions = st.from_regex(
    r"([a-z][a-z0-9]{0,8}-){0,2}v?[0-9]{1,9}(\.[0-9]{1,9}){0,3}", fullmatch=True)
announcements = st.builds(
    ModelAnnouncement, action=st.sampled_from(["install", "rollback", "shadow"]),
    gateway=ids, version=ordered_versions, url=st.just("https://cloud.example/models/v1.tar"),
    sha256=st.from_regex(r"[0-9a-f]{64}", fullmatch=True), size=st.integers(1, 2**40),
    rollout_id=st.none() | ids, issued_at=st.floats(1, 2e9),
    expires_at=st.floats(2e9 + 1, 4e9), key_id=st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
    signature=st.from_regex(r"[A-Za-z0-9+/]{10,88}", fullmatch=True))
reports = st.builds(UpdateReport, gateway=ids, version=versions,
                    step=st.sampled_from(["downloading", "verified", "active", "failed"]),
                    reason=st.none() | st.text(max_size=100), time=finite)


@given(st.one_of(alert_events, asset_states, statuses, announcements, reports))
def test_json_payloads_round_trip_and_read_as_json(message):
    payload = codec.encode_json(message)
    assert codec.decode_json(payload, type(message)) == message
    assert isinstance(json.loads(payload), dict)  # what mosquitto_sub shows a person


def alert_dict(**over) -> dict:
    base = dict(source="edge", gateway="gw", asset="a1", old_state="NORMAL",
                new_state="WARNING", probability=0.7, thresholds={"warning_enter": 0.5},
                model_version="v1", seq=3, tick_time=1.0, published_at=2.0)
    return {**base, **over}


@pytest.mark.parametrize("payload, reason", [
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (json.dumps(alert_dict(schema_version=2)).encode(), "unknown schema version 2"),
    (json.dumps(alert_dict(gateway="a/b")).encode(), "gateway"),
    (json.dumps(alert_dict(asset="+")).encode(), "asset"),
    (json.dumps(alert_dict(new_state="PANIC")).encode(), "new_state"),
    (json.dumps(alert_dict(surprise=1)).encode(), "surprise"),
    (json.dumps(alert_dict(seq=-1)).encode(), "seq"),
    (json.dumps(alert_dict())[:-5].encode(), "not JSON"),
    (json.dumps(alert_dict(probability=None)).encode(), "probability"),
    (b'{"probability": NaN}', "probability"),
    (b" " * (256 * 1024 + 1), "exceeds the 262144 limit"),
])
def test_bad_json_payloads_raise_one_contract_error_naming_the_problem(payload, reason):
    with pytest.raises(ContractError, match=reason):
        codec.decode_json(payload, AlertEvent)


def test_nan_and_infinity_are_refused_in_numbers():
    text = json.dumps(alert_dict(probability=math.inf))  # Python writes Infinity
    with pytest.raises(ContractError, match="probability"):
        codec.decode_json(text.encode(), AlertEvent)


# --------------------------------------------------------------------------- uplink batches

@st.composite
def batches(draw):
    n = draw(st.integers(1, 60))
    f = draw(st.integers(1, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    prob = rng.random(n).astype(np.float32)
    prob[: draw(st.integers(0, n))] = np.nan  # windows not full yet
    return UplinkBatch(
        gateway=draw(ids), asset=draw(ids), first_seq=draw(st.integers(0, 2**53 - 10**4)),
        timestamps=1.8e9 + np.cumsum(rng.random(n) + 0.01),
        features=tuple(f"s{i}" for i in range(f)),
        values=rng.normal(0, 1000, (n, f)).astype(np.float32),
        probability=prob, rul=np.where(np.isnan(prob), np.nan, rng.random(n) * 125),
        model_version=draw(versions), escalated=draw(st.booleans()))


@settings(max_examples=200)
@given(batches())
def test_uplink_batches_round_trip_exactly(batch):
    assert codec.decode_uplink(codec.encode_uplink(batch)) == batch


def uplink(**over) -> UplinkBatch:
    data = dict(gateway="gw", asset="a1", first_seq=10, timestamps=[1.0, 2.0, 3.0],
                features=("s1", "s2"), values=np.ones((3, 2), np.float32),
                probability=[np.nan, 0.1, 0.2], rul=[np.nan, 90.0, 80.0], model_version="v1")
    return UplinkBatch(**{**data, **over})


def pack(body: dict, version: int = 1) -> bytes:
    return bytes([version]) + zlib.compress(msgpack.packb(body, use_bin_type=True))


def good_body() -> dict:
    return {"g": "gw", "a": "a1", "s": 0, "f": ["s1", "s2"],
            "t": np.array([1.0, 2.0], "<f8").tobytes(), "x": np.ones(4, "<f4").tobytes(),
            "p": np.zeros(2, "<f4").tobytes(), "r": np.zeros(2, "<f4").tobytes(), "m": "v1"}


def body_with(**over) -> dict:
    return {**good_body(), **over}


@pytest.mark.parametrize("payload, reason", [
    (b"", "empty"),
    (bytes([9]) + b"abc", "unknown schema version 9"),
    (bytes([1]) + b"not zlib at all", "not valid zlib"),
    (codec.encode_uplink(uplink())[:-6], "truncated"),
    (codec.encode_uplink(uplink()) + b"junk", "trailing bytes"),
    (bytes([1]) + zlib.compress(b"\x00" * (5 * 1024 * 1024), 9), "inflates beyond"),
    (pack([1, 2, 3]), "must be a msgpack map"),
    (pack({"g": "gw"}), "lacks field"),
    (pack(body_with(x=b"\x00" * 7)), "not a whole array"),
    (pack(body_with(x=np.ones(6, "<f4").tobytes())), "expected 2 ticks x 2 features"),
    (pack(body_with(x=np.array([1, np.nan, 1, 1], "<f4").tobytes())), "NaN"),
    (pack(body_with(t=np.array([1.0, np.inf], "<f8").tobytes())), "timestamps"),
    (pack(body_with(g="gw/evil")), "gateway"),
    (pack(body_with(a="#")), "asset"),
    (pack(body_with(s=-1)), "first_seq"),
    (pack(body_with(f=["s1", "s1"])), "duplicate"),
    (pack(body_with(p=np.zeros(3, "<f4").tobytes())), "probability has 3 entries"),
    (pack(body_with(f="s1,s2")), "list of names"),
])
def test_bad_uplink_payloads_raise_one_contract_error_naming_the_problem(payload, reason):
    with pytest.raises(ContractError, match=reason):
        codec.decode_uplink(payload)


def test_uplink_size_limit_is_configurable():
    payload = codec.encode_uplink(uplink())
    with pytest.raises(ContractError, match=f"exceeds the {len(payload) - 1} limit"):
        codec.decode_uplink(payload, max_bytes=len(payload) - 1)
    assert codec.decode_uplink(payload, max_bytes=len(payload)) == uplink()


def test_uplink_is_a_fraction_of_naive_json():
    rng = np.random.default_rng(0)
    batch = uplink(timestamps=1.8e9 + np.arange(50.0), values=rng.normal(500, 5, (50, 14)),
                   features=tuple(f"sensor_{i}" for i in range(14)),
                   probability=rng.random(50), rul=rng.random(50) * 125)
    assert len(codec.encode_uplink(batch)) < 0.25 * len(codec.uplink_as_json(batch))


# --------------------------------------------------------------------------- bundles

@pytest.fixture
def signed(tmp_path):
    if not (DEFAULT_BUNDLE / "manifest.json").exists():
        pytest.skip("no default bundle")
    key, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    generate_keypair(key, pub)
    folder = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, folder)
    sign_bundle(folder, key)
    return folder, key, pub


def test_a_signed_bundle_verifies_and_survives_tar(signed, tmp_path):
    folder, _, pub = signed
    manifest = verify_bundle(folder, [pub])
    copy = unpack_bundle(pack_bundle(folder), tmp_path / "copy")
    assert verify_bundle(copy, [pub]) == manifest


def test_tampering_is_refused_with_the_reason(signed, tmp_path):
    folder, key, pub = signed
    edge = json.loads((folder / "manifest.json").read_text())["edge"]["file"]
    cases = {}
    for name in ("flip", "missing", "extra", "manifest"):
        cases[name] = tmp_path / name
        shutil.copytree(folder, cases[name])
    flip_byte(cases["flip"] / edge, 300)
    (cases["missing"] / "model_float.tflite").unlink()
    (cases["extra"] / "model_backdoor.tflite").write_bytes(b"x")
    doc = json.loads((cases["manifest"] / "manifest.json").read_text())
    doc["thresholds"]["decision"] = 0.9
    (cases["manifest"] / "manifest.json").write_text(json.dumps(doc))
    expect = {"flip": f"{edge} has SHA-256", "missing": "lacks model_float.tflite",
              "extra": "model_backdoor.tflite", "manifest": "does not verify"}
    for name, reason in expect.items():
        with pytest.raises(ContractError, match=reason):
            verify_bundle(cases[name], [pub])
    other_key, other_pub = tmp_path / "o.pem", tmp_path / "o.pub"
    generate_keypair(other_key, other_pub)
    with pytest.raises(ContractError, match="any trusted key"):
        verify_bundle(folder, [other_pub])
    with pytest.raises(ContractError, match="no trusted public keys"):
        verify_bundle(folder, [])


def test_tar_with_paths_or_links_is_refused(tmp_path):
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("../evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ContractError, match="not a plain top-level file"):
        unpack_bundle(out.getvalue(), tmp_path / "x")
    with pytest.raises(ContractError, match="not a valid tar"):
        unpack_bundle(b"garbage" * 100, tmp_path / "y")
