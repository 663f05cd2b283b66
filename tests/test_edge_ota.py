"""Over-the-air updates: real broker, real HTTP downloads, real bundles and interpreters."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from contract import codec, topics
from contract.bundle import generate_keypair
from contract.manifest import MANIFEST
from contract.ota import sign_announcement
from contract.payloads import ModelAnnouncement, UpdateReport
from tests.conftest import DEFAULT_BUNDLE
from tests.support.bundles import flip_byte, tar, variant
from tests.support.mqtt import Recorder
from tests.test_edge_agent import GW, expected_seqs, finish, start_agent, uplinked

pytestmark = pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(),
                                reason="default bundle not built yet")


class BundleServer:
    """Serves bundle tars over real HTTP; requires the bearer token."""

    def __init__(self, token: str, signing_key: Path, gateway: str = GW) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization header)
        self.redirects: dict[str, str] = {}  # path -> where to send the client instead
        self.signing_key, self.gateway = signing_key, gateway
        files, requests, redirects = self.files, self.requests, self.redirects

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                requests.append((self.path, self.headers.get("Authorization")))
                if self.path in redirects:
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.end_headers()
                    return
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self.send_error(401)
                    return
                body = files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def announce(self, name: str, folder: Path, action: str = "install",
                 **over: object) -> ModelAnnouncement:
        """Serve `folder` as `/<name>.tar` and sign an announcement of it (fields in `over`
        replace the defaults before signing)."""
        data = tar(folder)
        self.files[f"/{name}.tar"] = data
        version = json.loads((folder / MANIFEST).read_text())["version"]
        now = time.time()
        fields = dict(action=action, gateway=self.gateway, version=version,
                      url=f"{self.origin}/{name}.tar", sha256=hashlib.sha256(data).hexdigest(),
                      size=len(data), rollout_id="r1", issued_at=now, expires_at=now + 600)
        return sign_announcement(self.signing_key, **{**fields, **over})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_signed_update_is_verified_self_tested_and_swapped_without_gaps(
        tmp_path, broker, data_dir):
    key, pub = tmp_path / "k.key", tmp_path / "k.pub"
    generate_keypair(key, pub)
    other_key, other_pub = tmp_path / "o.key", tmp_path / "o.pub"
    generate_keypair(other_key, other_pub)
    b = tmp_path / "bundles"
    base = variant(DEFAULT_BUNDLE, b / "v1", "v1", key)
    tampered = variant(base, b / "t", "v3", key)
    flip_byte(tampered / json.loads((base / MANIFEST).read_text())["edge"]["file"])
    untrusted = variant(base, b / "u", "v4", other_key)

    def break_model(folder: Path, doc: dict) -> None:
        (folder / doc["edge"]["file"]).write_bytes(b"TFL3 this is not a flatbuffer" * 50)

    broken = variant(base, b / "x", "v5", key, change=break_model)

    def eager(folder: Path, doc: dict) -> None:
        doc["thresholds"]["decision"] = 1e-7  # below any healthy window's probability: all "fail"

    disagreeing = variant(base, b / "d", "v6", key, change=eager)
    good = variant(base, b / "v7", "v7", key)  # above every refused one: versions only go up
    older = variant(base, b / "v2", "v2", key)

    server = BundleServer("tok", key)
    units = [31, 34]
    cfg = {
        "gateway_id": GW, "broker": {"host": broker.host, "port": broker.port},
        "sources": [{"type": "cmapss", "file": str(data_dir / "test_FD001.txt"),
                     "units": units, "rate": 25}],
        "bundle": {"path": str(base), "trusted_keys": [str(pub)], "download_token": "tok",
                   "model_server": server.origin, "state_dir": str(tmp_path / "state")},
        "outbox": {"path": str(tmp_path / "outbox.db"), "batch_max_age": 0.2},
    }
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(cfg))
    rec = Recorder(broker.host, broker.port, [topics.update(GW), topics.uplink(GW)])
    agent = start_agent(config, "--exit-when-drained")
    assert rec.wait_for(lambda ms: len(ms) >= 4, timeout=30)  # windows are filling

    def reports():
        return [codec.decode_json(m.payload, UpdateReport) for m in rec.messages
                if m.topic == topics.update(GW)]

    def announce_and_wait(name, folder, final: str) -> UpdateReport:
        ann = server.announce(name, folder)
        broker_pub = Recorder(broker.host, broker.port, [])
        broker_pub.client.publish(topics.model(GW), codec.encode_json(ann), qos=1,
                                  retain=True).wait_for_publish(5)
        broker_pub.close()
        assert rec.wait_for(lambda ms: any(r.version == ann.version and r.step == final
                                           for r in reports()), timeout=30), reports()
        return next(r for r in reports() if r.version == ann.version and r.step == final)

    assert "file changed after signing" in announce_and_wait("t", tampered, "failed").reason
    assert "any trusted key" in announce_and_wait("u", untrusted, "failed").reason
    assert "cannot load the edge model" in announce_and_wait("x", broken, "failed").reason
    assert "self-test" in announce_and_wait("d", disagreeing, "failed").reason
    announce_and_wait("g", good, "active")
    steps = [r.step for r in reports() if r.version == "v7"]
    assert steps == ["downloading", "verified", "active"]
    assert "not newer than v7" in announce_and_wait("o", older, "failed").reason
    finish(agent)

    want = expected_seqs(data_dir, units)
    ups = [m for m in rec.messages if m.topic == topics.uplink(GW)]
    assert rec.wait_for(lambda ms: set(uplinked(
        [m for m in ms if m.topic == topics.uplink(GW)])) >= want, timeout=30)
    assert set(uplinked(ups)) == want
    # each asset's ticks were scored by v1 up to one seq and by v2 from the next on
    by_asset: dict[str, dict[int, str]] = {}
    for m in ups:
        batch = codec.decode_uplink(m.payload)
        for s in batch.seqs:
            by_asset.setdefault(batch.asset, {})[s] = batch.model_version
    for asset, versions in by_asset.items():
        ordered = [versions[s] for s in sorted(versions)]
        switch = ordered.index("v7")
        assert set(ordered[:switch]) == {"v1"} and set(ordered[switch:]) == {"v7"}, asset
    state = json.loads((tmp_path / "state" / "active.json").read_text())
    assert {k: state[k] for k in ("active", "previous", "highest")} == {
        "active": "v7", "previous": "v1", "highest": "v7"}
    # the refused bundles were removed; the token went with every download, to the server only
    assert sorted(p.name for p in (tmp_path / "state" / "bundles").iterdir()) == ["v7"]
    assert server.requests and all(auth == "Bearer tok" for _, auth in server.requests)
    rec.close()
    server.close()
