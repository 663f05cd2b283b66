"""Fuzzing the two parsers a stranger's bytes reach first: the cloud's uplink decoder and the
edge's raw-reading parser (with the checks a reading passes before it becomes a tick).

Hypothesis, derandomised (the same cases on every run), 10,000 cases each. A crash is any
exception other than the refusal the parser promises (ContractError, ValueError); a hang is a
case slower than HANG_SECONDS. Whatever passes must honour the payload semantics. The figures
(cases, crashes, hangs, time) are printed and recorded in docs/security.md.
"""

from __future__ import annotations

import json
import math
import time
import zlib

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract import codec
from contract.errors import ContractError
from contract.payloads import MAX_FEATURE_NAME, MAX_FEATURES, MAX_SEQ, TIME_MAX, TIME_MIN
from edge_agent.readings import ReadingChecker, Rejected
from edge_agent.sources.mqtt_input import parse_raw

pytestmark = pytest.mark.security
CASES = 10_000
HANG_SECONDS = 1.0
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


class Tally:
    """Cases run, refusals, acceptances and the slowest case, for the printed figures."""

    def __init__(self, name: str) -> None:
        self.name, self.cases, self.refused, self.accepted, self.slowest = name, 0, 0, 0, 0.0
        self.started = 0.0

    def timed(self, fn, *args):
        t0 = time.perf_counter()
        self.started = self.started or t0
        try:
            return fn(*args)
        finally:
            took = time.perf_counter() - t0
            self.cases += 1
            self.slowest = max(self.slowest, took)
            assert took < HANG_SECONDS, f"{self.name}: a case took {took:.2f}s (a hang)"

    def report(self) -> str:
        return (f"{self.name}: {self.cases} cases, {self.accepted} accepted, {self.refused} "
                f"refused, 0 crashes, 0 hangs (slowest {self.slowest * 1000:.1f} ms), "
                f"{time.perf_counter() - self.started:.1f} s")


# --- uplink ---------------------------------------------------------------------------------

def _valid_body(n: int, f: int, rng: np.random.Generator) -> dict:
    prob = rng.random(n).astype("<f4")
    prob[: rng.integers(0, n + 1)] = np.nan
    return {"g": "gw1", "a": "a1", "s": int(rng.integers(0, 2**40)), "f": [f"s{i}" for i in
            range(f)], "t": (1.8e9 + np.cumsum(rng.random(n))).astype("<f8").tobytes(),
            "x": rng.normal(0, 100, n * f).astype("<f4").tobytes(), "p": prob.tobytes(),
            "r": np.where(np.isnan(prob), np.nan, prob * 125).astype("<f4").tobytes(),
            "m": "v1", "e": bool(rng.integers(0, 2))}


def _pack(body: object, level: int = 1) -> bytes:
    return bytes([codec.UPLINK_VERSION]) + zlib.compress(
        msgpack.packb(body, use_bin_type=True), level)


# Precomputed: compressing megabytes per case would make generation the bottleneck.
BOMBS = [bytes([1]) + zlib.compress(b"\x00" * size, 9) for size in (10**5, 5 * 10**6, 5 * 10**7)]
# (msgpack holds integers in [-2^63, 2^64).)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=80),
                    st.binary(max_size=80))
field_values = st.one_of(scalars, st.lists(scalars, max_size=5),
                         st.lists(st.text(max_size=70), max_size=300))


@st.composite
def valid_payloads(draw) -> bytes:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return _pack(_valid_body(draw(st.integers(1, 40)), draw(st.integers(1, 12)), rng))


@st.composite
def mutated(draw) -> bytes:
    """Bit flips, truncations and insertions in a valid payload."""
    data = bytearray(draw(valid_payloads()))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "byte"]))
        i = draw(st.integers(0, len(data) - 1)) if data else 0
        if kind == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            data = data[:i]
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            data[i] = draw(st.integers(0, 255))
    return bytes(data)


@st.composite
def lying_bodies(draw) -> bytes:
    """Well-formed msgpack and zlib, fields replaced with anything: the semantic checks."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    body = _valid_body(draw(st.integers(1, 6)), draw(st.integers(1, 4)), rng)
    for key in draw(st.lists(st.sampled_from(
            ["g", "a", "s", "f", "t", "x", "p", "r", "m", "e", "sv", "sp", "sr", "zz"]),
            min_size=1, max_size=4, unique=True)):
        if key in "txpr" and draw(st.booleans()):  # numbers of the right form, any values
            dtype = "<f8" if key == "t" else "<f4"
            n = len(body[key]) // np.dtype(dtype).itemsize
            body[key] = np.array(draw(st.lists(st.floats(width=32 if dtype == "<f4" else 64),
                                               min_size=n, max_size=n)), dtype).tobytes()
        elif draw(st.booleans()) and key in body:
            del body[key]
        else:
            body[key] = draw(field_values)
    return _pack(body)


uplinks = st.one_of(
    st.binary(max_size=4096),
    st.binary(max_size=2048).map(lambda b: bytes([1]) + b),
    st.binary(max_size=2048).map(lambda b: bytes([1]) + zlib.compress(b)),
    st.builds(_pack, field_values),
    valid_payloads(), mutated(), lying_bodies(),
    st.integers(0, len(BOMBS) - 1).map(BOMBS.__getitem__))
UPLINK = Tally("decode_uplink")


@FUZZ
@given(uplinks)
def test_fuzz_decode_uplink_refuses_or_returns_a_sound_batch(payload):
    try:
        batch = UPLINK.timed(codec.decode_uplink, payload)
    except ContractError:
        UPLINK.refused += 1
        return
    UPLINK.accepted += 1
    assert batch.first_seq >= 0 and batch.seqs[-1] < MAX_SEQ
    t = batch.timestamps
    assert ((t >= TIME_MIN) & (t <= TIME_MAX)).all() and (np.diff(t) >= 0).all()
    p = batch.probability[~np.isnan(batch.probability)]
    assert ((p >= 0) & (p <= 1)).all()
    assert (batch.rul[~np.isnan(batch.rul)] >= 0).all() and np.isfinite(batch.values).all()
    assert 1 <= len(batch.features) <= MAX_FEATURES
    assert all(1 <= len(f) <= MAX_FEATURE_NAME for f in batch.features)
    assert isinstance(batch.escalated, bool)
    assert codec.decode_uplink(codec.encode_uplink(batch)) == batch


def test_fuzz_decode_uplink_figures():
    """Runs after the fuzz test above (file order): prints its figures."""
    if UPLINK.cases < CASES:
        pytest.skip("run with the fuzz test")
    print("\n" + UPLINK.report())


# --- raw readings ---------------------------------------------------------------------------

json_numbers = st.one_of(st.integers(-10**30, 10**30), st.floats(allow_nan=False),
                         st.sampled_from([10**400, -10**400, 2**53, 1e39, -1e39, 0, True]))
json_values = st.one_of(json_numbers, st.none(), st.booleans(), st.text(max_size=20),
                        st.lists(json_numbers, max_size=3))
often = st.sampled_from([True] * 9 + [False])  # uniform, unlike a small integers() range
feature_names = st.one_of(st.sampled_from(["a", "b", "c"]), st.text(max_size=70))


@st.composite
def raw_documents(draw) -> bytes:
    values = draw(st.dictionaries(feature_names, json_values, max_size=8))
    if draw(often):  # the features the checker wants, as numbers mostly in range
        values.update({k: draw(st.one_of(st.floats(-1e6, 1e6), json_numbers)) for k in "abc"})
    plausible = st.floats(TIME_MIN, TIME_MAX)
    doc: object = {"time": draw(st.one_of(plausible, plausible, json_numbers, json_values))}
    if draw(st.booleans()):
        doc["values"] = values if draw(often) else draw(json_values)
    else:
        doc.update(values)
    if not draw(often):
        doc = draw(json_values)
    return json.dumps(doc).encode()  # infinities as Infinity, which json.loads reads back


good_topic = st.just("pdm/v1/gw1/pump-1/raw")
raw_topics = st.one_of(good_topic, good_topic, good_topic,
                       st.from_regex(r"pdm/v1/[A-Za-z0-9_-]{1,8}/[A-Za-z0-9_ #+/-]{0,10}/raw",
                                     fullmatch=True),
                       st.text(max_size=40))
raw_payloads = st.one_of(raw_documents(), raw_documents(), st.binary(max_size=512),
                         raw_documents().map(lambda b: b[: len(b) // 2]))
RAW = Tally("parse_raw + ReadingChecker")


@FUZZ
@given(raw_topics, raw_payloads)
def test_fuzz_raw_reading_refuses_or_returns_a_sound_row(topic, payload):
    checker = ReadingChecker(["a", "b", "c"])
    checker.last_time["pump-1"] = 1.0  # an earlier reading of the common asset

    def parse_and_check():
        return checker.check(parse_raw(topic, payload))

    try:
        row = RAW.timed(parse_and_check)
    except (Rejected, ValueError):
        RAW.refused += 1
        return
    RAW.accepted += 1
    assert row.dtype == np.float32 and row.shape == (3,) and np.isfinite(row).all()
    t = checker.last_time[parse_raw(topic, payload).asset]
    assert not isinstance(t, bool) and math.isfinite(t) and TIME_MIN <= t <= TIME_MAX


def test_fuzz_raw_reading_figures():
    if RAW.cases < CASES:
        pytest.skip("run with the fuzz test")
    print("\n" + RAW.report())
