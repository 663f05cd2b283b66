"""A private Mosquitto on a free loopback port, for tests that need a real broker."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
SHIPPED_DIR = REPO / "deploy" / "docker" / "mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def shipped_config(workdir: Path, pki_dir: Path, port: int, host: str = "127.0.0.1",
                   config_dir: Path = SHIPPED_DIR) -> list[str]:
    """The shipped mosquitto.conf, run here: its settings and ACL as they are, with the
    container paths pointed at `pki_dir` (certificates), `config_dir` (the ACL) and `workdir`
    (persistence, log), and its listener moved to a free loopback port."""
    lines = []
    for line in (config_dir / "mosquitto.conf").read_text().splitlines():
        words = line.split()
        if words and words[0] == "listener":
            line = f"listener {port} {host}"
        elif words and words[0] == "log_dest":
            line = f"log_dest file {workdir / 'mosquitto.log'}"
        line = (line.replace("/mosquitto/certs/", f"{pki_dir}/")
                .replace("/mosquitto/config/", f"{config_dir}/")
                .replace("/mosquitto/data/", f"{workdir / 'data'}/"))
        lines.append(line)
    return lines


class Mosquitto:
    """Start, stop and restart one mosquitto process with its own config and persistence.

    `shipped_pki`: run the shipped deploy/docker/mosquitto config (mutual TLS, ACL) with the
    certificates `python -m cloud_service pki init` wrote there, instead of the plain one.
    `save_every_change`: persist after every change (what survives a SIGKILL of the broker, for
    the fault tests); off, the broker saves once a minute, as brokers are usually run, and a
    long queue does not cost it a full save per message (the benchmarks)."""

    def __init__(self, workdir: Path, tls: TlsFiles | None = None, port: int | None = None,
                 shipped_pki: Path | None = None, save_every_change: bool = True):
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise RuntimeError("mosquitto is not installed (apt-get install -y mosquitto)")
        self.exe = exe
        self.workdir = workdir
        self.tls = tls
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {workdir / 'data'}/",
            *(["autosave_interval 1", "autosave_on_changes true"] if save_every_change
              else ["autosave_interval 60"]),
            # The default of 1000 silently drops QoS 1 messages to a slow subscriber.
            "max_queued_messages 1000000",
            "max_inflight_messages 100",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if shipped_pki is not None:
            lines = shipped_config(workdir, shipped_pki, self.port, self.host)
            self.tls = TlsFiles(ca=shipped_pki / "ca.crt", server_cert=shipped_pki / "broker.crt",
                                server_key=shipped_pki / "broker.key",
                                client_cert=shipped_pki / "cloud.crt",
                                client_key=shipped_pki / "cloud.key")
        if os.geteuid() == 0:
            lines.insert(0, "user root")  # otherwise it drops to 'mosquitto' and cannot write here
        if tls and shipped_pki is None:
            lines += [
                f"cafile {tls.ca}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> Mosquitto:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"mosquitto exited at start: {err}{log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def reload(self) -> None:
        """SIGHUP: Mosquitto reads its config, ACL and (2.0) TLS files again."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def restart(self) -> None:
        self.stop()
        self.start()
