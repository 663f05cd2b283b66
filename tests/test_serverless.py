"""Serverless handlers: HTTP scoring and the IoT rule function, in-process and under the real
`awslambdaric` runtime client driven through a local Lambda Runtime API endpoint."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cloud_service.config import StoreConfig
from cloud_service.serverless import http, iot
from cloud_service.serverless.local_runtime import RuntimeApi
from cloud_service.serverless.model import load
from cloud_service.store import open_store
from cloud_service.windows import assemble_windows
from contract import codec, topics
from contract.bundle import read_manifest
from contract.payloads import UplinkBatch
from contract.preprocess import normalise
from tests.conftest import DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY
from tests.support.procs import track

REPO = Path(__file__).resolve().parent.parent
ENV = {"PDM_BUNDLE": str(DEFAULT_BUNDLE), "PDM_BUNDLE_KEY": str(DEFAULT_BUNDLE_KEY)}
W = read_manifest(DEFAULT_BUNDLE).window  # window length of the default bundle
F = len(read_manifest(DEFAULT_BUNDLE).features)  # and its inputs per row


@pytest.fixture(scope="module")
def loaded():
    return load(DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY)


@pytest.fixture(scope="module")
def keras(loaded):
    """The container's model (TensorFlow), for the equality check."""
    from cloud_service.model import KerasModel
    return KerasModel(DEFAULT_BUNDLE, loaded.manifest)


@pytest.fixture(autouse=True)
def _bundle_env(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


def raw_ticks(manifest, n: int, seed: int = 0, drift: float = 0.0) -> np.ndarray:
    """Sensor rows around the training distribution, drifting towards a fault."""
    rng = np.random.default_rng(seed)
    norm = manifest.normalisation
    z = rng.normal(0, 1, (n, len(manifest.features))) + np.linspace(0, drift, n)[:, None]
    return (np.asarray(norm.offset) + z * np.asarray(norm.scale)).astype(np.float32)


def uplink_event(manifest, first_seq: int, rows: np.ndarray, gateway: str = "gw1",
                 asset: str = "a1") -> dict:
    n = len(rows)
    batch = UplinkBatch(gateway=gateway, asset=asset, first_seq=first_seq,
                        timestamps=1_800_000_000.0 + np.arange(first_seq, first_seq + n),
                        features=tuple(manifest.features), values=rows,
                        probability=np.full(n, 0.25, np.float32),
                        rul=np.full(n, 60.0, np.float32), model_version="edge-1")
    return {"topic": topics.uplink(gateway),
            "payload": base64.b64encode(codec.encode_uplink(batch)).decode(),
            "received_ms": 1_800_000_100_000}


def http_event(body: object, url: bool = False) -> dict:
    """API Gateway HTTP API v2 event, or the function URL's (same payload format 2.0)."""
    text = json.dumps(body)
    ctx = {"http": {"method": "POST", "path": "/score", "sourceIp": "127.0.0.1"},
           "requestId": "r1", "stage": "$default"}
    if url:
        ctx["domainName"] = "abc.lambda-url.eu-west-1.on.aws"
        return {"version": "2.0", "rawPath": "/", "headers": {}, "requestContext": ctx,
                "body": base64.b64encode(text.encode()).decode(), "isBase64Encoded": True}
    return {"version": "2.0", "routeKey": "POST /score", "rawPath": "/score", "headers": {},
            "requestContext": ctx, "body": text, "isBase64Encoded": False}


def test_http_scores_like_the_container(loaded, keras):
    m = loaded.manifest
    rows = raw_ticks(m, 3 * m.window, drift=6.0)
    windows = np.stack([rows[i:i + m.window] for i in range(0, 3 * m.window, m.window)])
    out = http.handler(http_event({"windows": windows.tolist()}))
    assert out["statusCode"] == 200, out
    body = json.loads(out["body"])
    assert body["model_version"] == m.version
    prob, rul = keras(normalise(windows, m)[0])
    got = body["predictions"]
    assert len(got) == 3
    np.testing.assert_allclose([g["probability"] for g in got], prob, atol=1e-4)
    np.testing.assert_allclose([g["rul"] for g in got], rul, atol=1e-2)
    cut = m.thresholds.decision
    assert [g["decision"] for g in got] == ["fault" if p >= cut else "normal" for p in prob]
    # Named columns in another order give the same scores.
    order = list(reversed(m.features))
    shuffled = windows[:, :, [list(m.features).index(f) for f in order]]
    again = json.loads(http.handler(http_event({"windows": shuffled.tolist(),
                                                "features": order}, url=True))["body"])
    assert again == body


@pytest.mark.parametrize("body, reason", [
    ("not json", "not JSON"),
    ({"rows": []}, '"windows"'),
    ({"windows": []}, "non-empty"),
    ({"windows": [[[1.0, 2.0]]]}, "rows of"),
    ({"windows": [[["x"] * F] * W]}, "rows of"),
    ({"windows": [[[float("nan")] * F] * W]}, "non-finite"),
    ({"windows": [[[0.0] * F] * W], "features": ["a"]}, "lack"),
    ({"windows": [[[0.0] * F] * W], "extra": 1}, "unknown"),
])
def test_http_bad_input_is_a_400_with_the_reason(loaded, body, reason):
    event = http_event(body)
    if isinstance(body, str):
        event["body"] = body
    out = http.handler(event)
    assert out["statusCode"] == 400
    assert reason in json.loads(out["body"])["error"]


def test_iot_stores_scores_and_is_idempotent(loaded, keras, postgres_url):
    m = loaded.manifest
    w = m.window
    store = open_store(StoreConfig(url=postgres_url))
    try:
        rows = raw_ticks(m, w + 20, seed=3, drift=4.0)
        first = uplink_event(m, 0, rows[:w + 5])
        out = iot.handle(first, store, loaded)
        assert (out.stored_ticks, out.scored) == (w + 5, 6)
        assert iot.handle(first, store, loaded) == iot.Outcome(0, 0)  # redelivered
        second = uplink_event(m, w + 5, rows[w + 5:])
        assert iot.handle(second, store, loaded) == iot.Outcome(15, 15)
        assert iot.handle(second, store, loaded) == iot.Outcome(0, 0)
        preds = store.predictions("gw1", "a1", -1, None, 1000)
        assert [p["seq"] for p in preds] == list(range(w - 1, w + 20))
        ends = [p["seq"] for p in preds]
        x, _ = assemble_windows(np.arange(w + 20), rows, ends, m)
        prob, rul = keras(x)
        np.testing.assert_allclose([p["probability"] for p in preds], prob, atol=1e-4)
        np.testing.assert_allclose([p["rul"] for p in preds], rul, atol=1e-2)
        assert {p["edge_probability"] for p in preds} == {0.25}
        # A payload naming another gateway than its topic is a dead letter, not stored ticks.
        bad = dict(uplink_event(m, 100, rows[:3], gateway="gw2"), topic=topics.uplink("gw1"))
        assert iot.handle(bad, store, loaded).dead_letter == "gateway-mismatch"
        with pytest.raises(iot.BadEvent):
            iot.parse_event({"topic": "x", "payload": "%%%"})
        # While a container replica holds a lease, the function stores and leaves scoring
        # (and alerting) to it.
        store.heartbeat("replica-1", "t", 30.0)
        more = uplink_event(m, w + 20, raw_ticks(m, 5, seed=4))
        assert iot.handle(more, store, loaded) == iot.Outcome(5, 0, left_to_replicas=True)
        assert len(store.predictions("gw1", "a1", w + 19, None, 100)) == 0
    finally:
        store.close()


def start_runtime(api: RuntimeApi, handler: str, extra: dict | None = None,
                  ) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), AWS_LAMBDA_RUNTIME_API=api.address)
    env.update(ENV)
    env.update(extra or {})
    return track(subprocess.Popen([sys.executable, "-m", "awslambdaric", handler], cwd=REPO,
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))


def test_handlers_under_awslambdaric(loaded, postgres_url):
    m = loaded.manifest
    windows = np.stack([raw_ticks(m, m.window, seed=s) for s in range(2)])
    direct = json.loads(http.handler(http_event({"windows": windows.tolist()}))["body"])
    with RuntimeApi() as api:
        proc = start_runtime(api, "cloud_service.serverless.http.handler")
        try:
            for url in (False, True):
                res = api.invoke(http_event({"windows": windows.tolist()}, url=url))
                assert res.ok and res.body["statusCode"] == 200, res.body
                assert json.loads(res.body["body"]) == direct
            res = api.invoke(http_event({"windows": "no"}))
            assert res.ok and res.body["statusCode"] == 400
        finally:
            proc.kill()
            proc.wait()
    with RuntimeApi() as api:
        proc = start_runtime(api, "cloud_service.serverless.iot.handler",
                             {"PDM_STORE_URL": postgres_url})
        try:
            event = uplink_event(m, 0, raw_ticks(m, m.window + 1, seed=5))
            res = api.invoke(event)
            assert res.ok and res.body == {"stored_ticks": m.window + 1, "scored": 2,
                                           "dead_letter": None, "left_to_replicas": False}, res.body
            assert api.invoke(event).body == {"stored_ticks": 0, "scored": 0,
                                              "dead_letter": None, "left_to_replicas": False}
        finally:
            proc.kill()
            proc.wait()


def test_template_passes_cfn_lint():
    exe = Path(sys.executable).parent / "cfn-lint"
    if not exe.exists():
        pytest.skip("cfn-lint not installed (pip install cfn-lint, in the dev extra)")
    r = subprocess.run([str(exe), str(REPO / "deploy" / "aws" / "serverless.yaml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def cost_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cloud_service", "cost", *args], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=120)


def test_cost_cli_prints_costs_break_even_and_writes_png(tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps([
        {"variant": "lambda-litert", "cold_start_ms": 230.0, "warm_ms_median": 4.0,
         "warm_ms_p99": 9.0, "package_mb": 165.0, "peak_rss_mb": 73.0},
        {"variant": "container (KerasModel)", "warm_ms_median": 0.5, "warm_ms_p99": 0.7,
         "cold_start_ms": None, "package_mb": None, "peak_rss_mb": None}]))
    png = tmp_path / "cost.png"
    r = cost_cli("--assets", "20", "--ticks-per-s", "1", "--bench-json", str(bench),
                 "--png", str(png))
    assert r.returncode == 0, r.stderr
    assert "Lambda 4 ms/window" in r.stdout
    assert "container cheaper from" in r.stdout and "container: fargate" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for bad, why in ((["--assets", "0", "--ticks-per-s", "1"], "assets must be a positive"),
                     (["--assets", "5", "--ticks-per-s", "-1"], "ticks-per-s must be a positive"),
                     (["--assets", "5", "--ticks-per-s", "1", "--stride", "0"], "stride"),
                     (["--assets", "five", "--ticks-per-s", "1"], "Invalid value for '--assets'"),
                     (["--assets", "5", "--ticks-per-s", "1", "--prices", str(bench)],
                      "price table")):
        r = cost_cli(*bad, "--png", str(tmp_path / "x.png"))
        assert r.returncode == 2 and why in " ".join(r.stderr.split()), (bad, r.stderr)


def test_cost_model_break_even_is_where_the_lines_cross():
    from cloud_service import cost as c
    prices = c.load_prices()
    fleet, compute = c.Fleet(1, 1.0), c.Compute()
    for platform in c.PLATFORMS:
        n = c.break_even(fleet, compute, prices, platform)
        assert n is not None and n > 1
        at, before = fleet.with_assets(n), fleet.with_assets(n - 1)
        assert c.container_month(at, compute, prices, platform) <= c.lambda_month(
            at, compute, prices)
        assert c.container_month(before, compute, prices, platform) > c.lambda_month(
            before, compute, prices)


def test_a_bundle_that_fails_verification_is_an_init_error(tmp_path):
    """The function refuses to start on a bundle signed by an untrusted key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    other = tmp_path / "other.pub"
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with RuntimeApi() as api:
        api.submit(http_event({"windows": []}))
        proc = start_runtime(api, "cloud_service.serverless.http.handler",
                             {"PDM_BUNDLE_KEY": str(other)})
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert api.init_errors, "no init error was reported"
        assert "refused" in json.dumps(api.init_errors)


def test_warm_handler_imports_no_tensorflow_and_fits_lambda_zip_limit(tmp_path):
    from cloud_service.serverless import package
    from contract.bundle import verify_bundle
    modules = package.imported_modules(env=ENV)
    assert "ai_edge_litert" in modules and "awslambdaric" in modules
    assert not {"tensorflow", "keras", "tf_keras"} & set(modules)
    files = package.files_of(modules) | package.bundle_files(DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY)
    # The bundle as the zip lays it out passes the check the function runs at cold start.
    for name, path in files.items():
        if name.startswith("bundle/") or name == "bundle_signing_key.pub":
            (tmp_path / name).parent.mkdir(exist_ok=True)
            (tmp_path / name).write_bytes(path.read_bytes())
    verify_bundle(tmp_path / "bundle", [tmp_path / "bundle_signing_key.pub"])
    assert package.unzipped_mb(files) < package.UNZIPPED_LIMIT_MB
