"""The HTTP API's defences (issue 15): read and admin tokens, loopback by default, docs that
work offline, and a schema that says what the service does (schemathesis, every check)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_service.config import CloudConfig, load_config
from tests.test_cloud_service import (
    AUTH,
    TOKEN,
    Running,
    W,
    cloud_config,
    send_batches,
    wait_until,
)

pytestmark = pytest.mark.security
READ_TOKEN = "read-token-0123456789"
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from tests.support.cloud import make_bundle
    from tests.test_cloud_service import FEATURES

    root = tmp_path_factory.mktemp("bundle")
    return make_bundle(root / "test-1", root / "keys", window=W, features=FEATURES)


@pytest.fixture
def guarded(tmp_path, broker, bundle):
    """The service with both tokens set."""
    running = Running(cloud_config(tmp_path, broker, bundle[0], bundle[1],
                                   api={"read_token": READ_TOKEN}))
    yield running
    running.close()


READS = ["/api/v1/gateways", "/api/v1/assets", "/api/v1/alerts", "/api/v1/models",
         "/api/v1/rollouts", "/api/v1/assets/gw/a1", "/api/v1/assets/gw/a1/ticks",
         "/api/v1/assets/gw/a1/predictions", "/api/v1/models/test-1/shadow"]


def test_read_routes_need_a_token_once_read_token_is_set(guarded):
    h = guarded.http
    for path in READS:
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": f"Basic {READ_TOKEN}"}):
            r = h.get(path, headers=headers)
            assert r.status_code == 401, (path, headers, r.status_code)
            assert "api.read_token" in r.json()["detail"]
            assert r.headers["www-authenticate"] == "Bearer"
        for headers in (READ, AUTH):  # the admin token reads too
            assert h.get(path, headers=headers).status_code in (200, 404), (path, headers)
    # The read token writes nothing and reads no admin route.
    assert h.get("/api/v1/dead-letters", headers=READ).status_code == 401
    assert h.get("/api/v1/dead-letters", headers=AUTH).status_code == 200
    assert h.get("/api/v1/models/test-1/bundle", headers=READ).status_code == 401
    r = h.post("/api/v1/rollouts", json={"version": "test-1"}, headers=READ)
    assert r.status_code == 401 and "api_token" in r.json()["detail"]
    assert h.post("/api/v1/models", content=b"x", headers=READ).status_code == 401
    # Health, readiness, metrics and the docs stay open.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc"):
        assert h.get(path).status_code == 200, path


def test_without_read_token_reads_stay_open(tmp_path, broker, bundle):
    cloud = Running(cloud_config(tmp_path, broker, bundle[0], bundle[1]))
    try:
        assert cloud.cfg.api.read_token is None
        for path in ("/api/v1/gateways", "/api/v1/models"):
            assert cloud.http.get(path).status_code == 200
        assert cloud.http.get("/api/v1/dead-letters").status_code == 401
    finally:
        cloud.close()


def test_tokens_are_compared_in_constant_time():
    package = REPO / "cloud_service" / "api"
    source = "\n".join(path.read_text() for path in sorted(package.rglob("*.py")))
    compares = re.findall(r"(\w+\.)?compare_digest\(", (package / "deps.py").read_text())
    assert compares and "== token" not in source and "token ==" not in source
    assert "get_secret_value() ==" not in source


def test_read_token_comes_from_the_environment_and_is_masked(tmp_path, monkeypatch):
    f = tmp_path / "cloud.yaml"
    f.write_text("log: {level: INFO}\n")
    monkeypatch.setenv("PDM_CLOUD_API_TOKEN", TOKEN)
    monkeypatch.setenv("PDM_CLOUD_API__READ_TOKEN", READ_TOKEN)
    cfg = load_config(f)
    assert cfg.api_token.get_secret_value() == TOKEN
    assert cfg.api.read_token.get_secret_value() == READ_TOKEN
    assert READ_TOKEN not in str(cfg.masked())
    monkeypatch.setenv("PDM_CLOUD_API__READ_TOKEN", "short")
    with pytest.raises(ValueError, match="read_token"):
        load_config(f)


def test_http_binds_loopback_by_default_and_the_container_binds_all():
    import yaml

    assert CloudConfig(api_token=TOKEN).http.host == "127.0.0.1"
    doc = yaml.safe_load((REPO / "deploy" / "docker" / "cloud.yaml").read_text())
    assert doc["http"]["host"] == "0.0.0.0"  # inside the container: published by the engine


def test_docs_load_only_assets_the_service_serves(guarded):
    h = guarded.http
    for page in ("/docs", "/redoc"):
        html = h.get(page).text
        assert "http://" not in html and "https://" not in html and "//cdn" not in html, page
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/docs-assets/") for a in assets), assets
        for asset in assets:
            r = h.get(asset)
            assert r.status_code == 200 and len(r.content) > 1000, asset
    swagger = h.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in swagger and "validatorUrl\": null" in swagger
    assert "/docs-assets/redoc.standalone.js" in h.get("/redoc").text
    js = h.get("/docs-assets/swagger-ui-bundle.js")
    assert "javascript" in js.headers["content-type"] and b"SwaggerUIBundle" in js.content


def test_rollout_schema_says_gateways_and_percent_are_alternatives(guarded):
    spec = guarded.http.get("/openapi.json").json()
    schema = spec["components"]["schemas"]["RolloutRequest"]
    assert schema["not"]["required"] == ["gateways", "percent"]
    r = guarded.http.post("/api/v1/rollouts", headers=AUTH,
                          json={"version": "test-1", "gateways": ["gw"], "percent": 50})
    assert r.status_code == 422 and isinstance(r.json()["detail"], list)
    refused = spec["paths"]["/api/v1/rollouts"]["post"]["responses"]["422"]
    assert refused["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ValidationProblem")


def run_schemathesis(url: str, cwd: Path, token: str, *extra: str) -> str:
    st = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    out = subprocess.run(
        [st, "--config-file", str(Path(__file__).parent / "schemathesis.toml"), "run",
         f"{url}/openapi.json", "--checks", "all", "-H",
         f"Authorization: Bearer {token}", "--max-examples", "20", "--seed", "1",
         "--phases", "examples,coverage,fuzzing", "--workers", "1", "--no-color",
         "--request-timeout", "30", *extra],
        capture_output=True, text=True, timeout=900, cwd=cwd)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    return out.stdout


def test_schemathesis_every_check_every_route_finds_nothing(guarded, publisher, tmp_path):
    """Every route, every check (schema conformance of every response, negative data refused,
    positive data accepted, auth not ignored), with the admin token and then the read token."""
    send_batches(publisher, "gw-fuzz", "a1", 2 * W, 5)  # rows for the read routes
    wait_until(lambda: asset_state_with(guarded, "gw-fuzz", "a1") is not None, 30, "rows")
    out = run_schemathesis(guarded.server.url, tmp_path, TOKEN)
    counted = re.search(r"(\d+) generated, (\d+) passed", out)
    assert counted and int(counted[1]) > 100 and counted[1] == counted[2], out
    print(f"\nschemathesis, api_token, every route: {counted[0]}")
    out = run_schemathesis(guarded.server.url, tmp_path, READ_TOKEN, "--include-method", "GET",
                           "--exclude-path-regex", "dead-letters|/bundle$")
    counted = re.search(r"(\d+) generated, (\d+) passed", out)
    assert counted and int(counted[1]) > 50 and counted[1] == counted[2], out
    print(f"schemathesis, api.read_token, GET routes: {counted[0]}")


def asset_state_with(c: Running, gateway: str, asset: str) -> dict | None:
    r = c.http.get(f"/api/v1/assets/{gateway}/{asset}", headers=READ)
    return r.json() if r.status_code == 200 else None


@pytest.fixture
def publisher(broker):
    from tests.test_cloud_service import Publisher

    p = Publisher(broker)
    yield p
    p.close()

