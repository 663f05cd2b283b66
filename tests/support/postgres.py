"""A private PostgreSQL server on a free loopback port, for tests and benchmarks that need one.

The Debian `postgresql` package's binaries (initdb, pg_ctl) are used directly: a cluster in a
temporary folder, trust authentication on 127.0.0.1 only, no fsync (test data need not survive
power loss; a committed transaction still survives a crash of the server). initdb refuses to
run as root, so as root the cluster is made and run by the `postgres` user, which then owns
the folder (it must not sit inside a folder only root can enter).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.support.broker import free_port

SUPERUSER = "pdm"


def postgres_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl (not on PATH on Debian), or None."""
    env = os.environ.get("PDM_PG_BINDIR")
    candidates = [env] if env else []
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(str(Path(found).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit()
                         else 0, reverse=True)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


class PostgresServer:
    """initdb + pg_ctl start/stop of one cluster; `create_database(name)` gives each test its
    own database on it."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install -y postgresql)")
        self.bindir = bindir
        self.workdir = Path(workdir)
        self.data = self.workdir / "data"
        self.log = self.workdir / "postgres.log"
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.user = SUPERUSER
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
        self._made: set[str] = set()

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*self._as, *args], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def start(self, timeout: float = 60) -> PostgresServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._as:
            shutil.chown(self.workdir, "postgres", "postgres")
            os.chmod(self.workdir, 0o700)
        if not (self.data / "PG_VERSION").exists():
            done = self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                             "-U", self.user, "-E", "UTF8", "--locale=C", "--no-sync")
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        options = (f"-p {self.port} -k {self.workdir} -c listen_addresses={self.host} "
                   "-c fsync=off -c full_page_writes=off "
                   "-c max_connections=200")
        done = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                         "-o", options, "-w", "-t", str(int(timeout)), "start",
                         timeout=timeout + 10)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start on port {self.port}: "
                               f"{done.stderr.strip()}\n{log[-2000:]}")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`immediate` is a crash, as a SIGKILL would be)."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                      "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, dbname: str = "postgres") -> str:
        """The store URL of a database on this server (no password: trust authentication)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._made.add(name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._made.discard(name)

    def wait_ready(self, timeout: float = 30) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(host=self.host, port=self.port, user=self.user,
                                     dbname="postgres", connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
