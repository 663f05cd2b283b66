"""The Lambda image (deploy/docker/Dockerfile.lambda), built with rootful podman and driven by
a local Lambda Runtime API: the handlers inside it answer as they do in-process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest

from cloud_service.serverless import http
from cloud_service.serverless.local_runtime import RuntimeApi
from tests.test_serverless import ENV, http_event, raw_ticks, uplink_event

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "deploy" / "docker"
IMAGE = "localhost/pdm-lambda:test"


def podman(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    conf = Path(os.environ.get("PDM_PODMAN_CACHE", "/var/cache/pdm-podman")) / "containers.conf"
    if conf.exists():
        env["CONTAINERS_CONF"] = str(conf)
    return subprocess.run(["podman", *args], env=env, text=True, capture_output=True,
                          timeout=timeout, check=False, **kw)


@pytest.fixture(scope="module")
def image():
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("needs root on a Debian-like host (rootful podman, as test-image.sh)")
    # As test-image.sh builds: the base images from podman-base.sh, the host network, and
    # the host's CA bundle for pip (PyPI is reached through a TLS-inspecting proxy here).
    script = (f'set -e; . "{DOCKER}/podman-base.sh"; opts="--network host --format docker '
              f'$PDM_PODMAN_ULIMITS"; ca=/etc/ssl/certs/ca-certificates.crt; '
              f'if [ -s $ca ]; then printf "[global]\\ncert = $ca\\n" > "$cache/pip.conf"; '
              f'opts="$opts -v $ca:$ca:ro -v $cache/pip.conf:/etc/pip.conf:ro"; fi; '
              f'podman build $opts --ignorefile "{DOCKER}/Dockerfile.lambda.dockerignore" '
              f'-f "{DOCKER}/Dockerfile.lambda" -t {IMAGE} "{REPO}"')
    built = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    size = podman("image", "inspect", IMAGE, "--format", "{{.Size}}")
    print(f"{IMAGE}: {int(size.stdout.strip()) / 1e6:.0f} MB")
    return IMAGE


def run_image(api: RuntimeApi, image: str, handler: str, env: dict | None = None) -> str:
    name = f"pdm-lambda-{uuid.uuid4().hex[:8]}"
    args = ["run", "-d", "--rm", "--name", name, "--network", "host",
            "-e", f"AWS_LAMBDA_RUNTIME_API={api.address}"]
    for k, v in (env or {}).items():
        args += ["-e", f"{k}={v}"]
    started = podman(*args, image, handler)
    assert started.returncode == 0, started.stderr
    return name


@pytest.mark.container
@pytest.mark.timeout(1200)
def test_lambda_image_answers_like_in_process(image, postgres_url, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    m = http.get_model().manifest
    windows = np.stack([raw_ticks(m, m.window, seed=s, drift=s * 3.0) for s in range(3)])
    direct = json.loads(http.handler(http_event({"windows": windows.tolist()}))["body"])
    with RuntimeApi() as api:
        name = run_image(api, image, "cloud_service.serverless.http.handler")
        try:
            for url in (False, True):
                res = api.invoke(http_event({"windows": windows.tolist()}, url=url), 120)
                assert res.ok and res.body["statusCode"] == 200, (res.body, api.init_errors)
                got = json.loads(res.body["body"])
                assert got["model_version"] == direct["model_version"]
                np.testing.assert_allclose(
                    [p["probability"] for p in got["predictions"]],
                    [p["probability"] for p in direct["predictions"]], atol=1e-5)
            assert api.invoke(http_event({"windows": []})).body["statusCode"] == 400
        finally:
            podman("rm", "-f", "-t", "1", name)
    with RuntimeApi() as api:
        name = run_image(api, image, "cloud_service.serverless.iot.handler",
                         {"PDM_STORE_URL": postgres_url})
        try:
            event = uplink_event(m, 0, raw_ticks(m, m.window + 2, seed=9))
            res = api.invoke(event, 120)
            assert res.body == {"stored_ticks": m.window + 2, "scored": 3, "dead_letter": None,
                                "left_to_replicas": False}
            assert api.invoke(event).body["scored"] == 0
        finally:
            podman("rm", "-f", "-t", "1", name)
