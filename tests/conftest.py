"""Fixtures every test module can use: real Mosquitto brokers (plain and mutual TLS) and a
real PostgreSQL server (one per session, a fresh database per test)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import suppress
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto
from tests.support.certs import make_tls_files
from tests.support.postgres import PostgresServer, postgres_bindir
from tests.support.procs import reap

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("PDM_DATA_DIR", REPO.parent / "shared" / "data" / "cmapss"))
# The bundle the agent tests run; another one can be tried with PDM_TEST_BUNDLE/PDM_TEST_BUNDLE_KEY.
DEFAULT_BUNDLE = Path(os.environ.get("PDM_TEST_BUNDLE", REPO / "models" / "default"))
DEFAULT_BUNDLE_KEY = Path(os.environ.get("PDM_TEST_BUNDLE_KEY",
                                         REPO / "models" / "default_signing_key.pub"))


@pytest.fixture(autouse=True)
def _reap_children():
    """No agent started by a test outlives it, whether the test passed or failed."""
    yield
    reap()


@pytest.fixture
def broker(tmp_path_factory):
    """A private plain-TCP Mosquitto; yields the Mosquitto object (host, port, restart())."""
    b = Mosquitto(tmp_path_factory.mktemp("broker")).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def tls_broker(tmp_path_factory):
    """A private Mosquitto requiring client certificates; `.tls` holds CA and client files."""
    work = tmp_path_factory.mktemp("tlsbroker")
    b = Mosquitto(work, tls=make_tls_files(work / "certs")).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def postgres_server():
    """One private PostgreSQL for the session (skipped only when its binaries are absent)."""
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql): initdb and "
                    "pg_ctl not found in /usr/lib/postgresql/*/bin or on PATH")
    # Not under pytest's own temp folder: that is private to root, and as root the server
    # runs as the postgres user.
    work = Path(tempfile.mkdtemp(prefix="pdm-pg-"))
    server = PostgresServer(work).start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """The store URL of a fresh database on the session's server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = postgres_server.create_database(name)
    yield url
    with suppress(Exception):
        postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """FD001 test files: the full data set when present, else the copy in the repository."""
    for folder in (DATA_DIR, REPO / "data" / "cmapss"):
        if (folder / "test_FD001.txt").exists():
            return folder
    pytest.skip(f"C-MAPSS test data not found in {DATA_DIR} (set PDM_DATA_DIR)")


@pytest.fixture(scope="session")
def train_data_dir() -> Path:
    """The full FD001 set (training files are not in the repository)."""
    if not (DATA_DIR / "train_FD001.txt").exists():
        pytest.skip(f"C-MAPSS training data not found in {DATA_DIR} (set PDM_DATA_DIR)")
    return DATA_DIR


def pytest_terminal_summary(terminalreporter):
    """Print the fault-injection figures (ticks produced / stored / duplicated / lost)."""
    from tests import test_system

    rows = getattr(test_system, "SUMMARY", [])
    if not rows:
        return
    tr = terminalreporter
    tr.section("FAULT SUMMARY")
    tr.write_line(f"{'fault':<20}{'produced':>10}{'stored':>10}{'duplicated':>12}{'lost':>8}"
                  f"{'redelivered (ignored)':>24}")
    for r in rows:
        tr.write_line(f"{r['fault']:<20}{r['produced']:>10}{r['stored']:>10}"
                      f"{r['duplicated']:>12}{r['lost']:>8}{r['redelivered_ignored']:>24}")
