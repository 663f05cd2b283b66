"""A private PostgreSQL server on a free loopback port in a temporary folder, for the benchmark.

The same shape as the test fixture's `tests.support.postgres.PostgresServer` (start/stop,
`url`, `create_database`), but durable: default settings, fsync on, as a production server
runs, so that its figures compare with SQLite's `synchronous=FULL` (the fixture turns fsync
off to make tests fast). initdb refuses to run as root, so as root the cluster is made and run
by the `postgres` user, which must own the folder.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.broker import free_port

SUPERUSER = "pdm"


class PostgresError(RuntimeError):
    """The server could not be found, initialised or started."""


def bin_dir() -> Path:
    """The newest installed server's binaries (Debian keeps them off the PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresError("PostgreSQL is not installed (apt-get install -y postgresql)")


class PostgresServer:
    """initdb + pg_ctl start on a free port; `stop()` stops it and removes the folder."""

    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        self.bin = bin_dir()
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pdm-pg-"))
        self.data = self.workdir / "data"
        self.log = self.workdir / "server.log"
        self._user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise PostgresError(f"{args[0]} failed ({done.returncode}): "
                                f"{(done.stderr or done.stdout).strip()[-2000:]}")

    def start(self, timeout: float = 60) -> PostgresServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8",
                  "--no-instructions")
        options = (f"-p {self.port} -k {self.workdir} -c listen_addresses={self.host} "
                   "-c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", str(int(timeout)), "start", timeout=timeout + 10)
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            except (PostgresError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def postmaster_pid(self) -> int | None:
        """The server's main process (its first line of postmaster.pid), for CPU accounting."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        import psycopg  # the cloud extra; only needed when a database is made

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
