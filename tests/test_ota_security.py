"""Attacks on model updates (issue 15), each against the real updater: real signed bundles, the
real LiteRT interpreter, downloads over real HTTP from servers started on 127.0.0.1, and the
agent's own Prometheus counters. Every one of them got through before announcements were signed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from cloud_service.rollouts import RolloutError, Rollouts
from cloud_service.store import SqliteStore
from contract import codec, topics
from contract.bundle import generate_keypair, key_fingerprint, load_private_key, read_manifest
from contract.errors import ContractError
from contract.ota import KeyRing, announcement_bytes, canonical_json, sign_announcement
from contract.payloads import ModelAnnouncement, UpdateReport
from contract.versions import is_newer, is_version
from edge_agent.config import ConfigError, load_config
from edge_agent.metrics import AgentMetrics
from edge_agent.scorer import Scorer
from edge_agent.updater import (
    BundleStore,
    Candidate,
    DownloadPolicy,
    OtaPolicy,
    UpdateError,
    Updater,
)
from tests.conftest import DEFAULT_BUNDLE
from tests.support.bundles import flip_byte, variant
from tests.test_edge_ota import BundleServer

pytestmark = [
    pytest.mark.security,
    pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(), reason="no bundle"),
]
GW = "gw-ota"
TOKEN = "model-server-token"


class Gateway:
    """One gateway's updater, wired as the agent wires it, minus MQTT: announcements go in
    through `on_message`, reports come out through `publish`."""

    def __init__(self, tmp_path: Path, shipped: Path, policy: OtaPolicy) -> None:
        self.store = BundleStore(tmp_path / "state", shipped)
        manifest = read_manifest(shipped)
        self.manifest, self.scorer = manifest, Scorer(shipped / manifest.edge.file, manifest)
        self.reports: list[UpdateReport] = []
        self.metrics = AgentMetrics()
        self.stop = threading.Event()
        self.updater = Updater(
            GW, self.store, policy, current=lambda: (self.manifest, self.scorer,
                                                     self.manifest.version),
            held_windows=lambda: [], swap=self.swap, publish=self.publish, stop=self.stop,
            refused=lambda kind: self.metrics.updates_refused.labels(kind).inc())
        self.updater.start()

    def swap(self, candidate: Candidate) -> None:
        self.manifest, self.scorer = candidate.manifest, candidate.scorer

    def publish(self, topic: str, payload: bytes) -> None:
        assert topic == topics.update(GW)
        self.reports.append(codec.decode_json(payload, UpdateReport))

    def send(self, ann: ModelAnnouncement | dict | bytes, final: tuple[str, ...] = (
            "active", "failed", "rolled-back", "shadow"), timeout: float = 30) -> UpdateReport:
        """Deliver an announcement as the broker would and wait for the report that ends it."""
        if isinstance(ann, ModelAnnouncement):
            payload = codec.encode_json(ann)
        elif isinstance(ann, dict):
            payload = json.dumps(ann).encode()
        else:
            payload = ann
        seen = len(self.reports)
        self.updater.on_message(topics.model(GW), payload)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [r for r in self.reports[seen:] if r.step in final]
            if done:
                return done[0]
            time.sleep(0.02)
        raise AssertionError(f"no final report; reports so far: {self.reports[seen:]}")

    def refused(self, reason: str) -> float:
        """The agent's /metrics count of refusals for `reason`."""
        text = generate_latest(self.metrics.registry).decode()
        line = f'pdm_edge_model_updates_refused_total{{reason="{reason}"}}'
        values = [float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)]
        return values[0] if values else 0.0

    def close(self) -> None:
        self.stop.set()
        self.updater.join(5)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Bundle signer, the cloud's announcement key, and an outsider's key (private, public)."""
    root = tmp_path_factory.mktemp("keys")
    pairs = {}
    for name in ("bundle", "cloud", "outsider"):
        pairs[name] = (root / f"{name}.key", root / f"{name}.pub")
        generate_keypair(*pairs[name])
    return pairs


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, keys):
    """The default bundle as 1.0.0 (shipped), 1.5.0, 2.0.0 and 3.0.0, signed by the bundle key."""
    root = tmp_path_factory.mktemp("bundles")
    key = keys["bundle"][0]
    shipped = variant(DEFAULT_BUNDLE, root / "1.0.0", "1.0.0", key)
    return {v: shipped if v == "1.0.0" else variant(shipped, root / v, v, key)
            for v in ("1.0.0", "1.5.0", "2.0.0", "3.0.0")}


def policy(keys, model_server: str | None, revoked: tuple[str, ...] = (),
           allow_file_urls: bool = False) -> OtaPolicy:
    return OtaPolicy(bundle_keys=KeyRing([keys["bundle"][1]], revoked),
                     announcement_keys=KeyRing([keys["cloud"][1]], revoked),
                     downloads=DownloadPolicy(model_server, TOKEN, allow_file_urls))


@pytest.fixture
def server(keys):
    s = BundleServer(TOKEN, keys["cloud"][0], gateway=GW)
    yield s
    s.close()


@pytest.fixture
def gateway(tmp_path, keys, bundles, server):
    g = Gateway(tmp_path, bundles["1.0.0"], policy(keys, server.origin))
    yield g
    g.close()


def installed(g: Gateway) -> list[str]:
    return sorted(p.name for p in g.store.root.iterdir())


def test_a_signed_install_goes_through_and_the_token_goes_to_the_model_server(
        gateway, server, bundles):
    report = gateway.send(server.announce("v2", bundles["2.0.0"]))
    assert report.step == "active", report
    assert gateway.manifest.version == "2.0.0" and gateway.store.highest() == "2.0.0"
    assert server.requests == [("/v2.tar", f"Bearer {TOKEN}")]


def test_downgrade_to_a_validly_signed_older_version_is_refused(gateway, server, bundles):
    assert gateway.send(server.announce("v2", bundles["2.0.0"])).step == "active"
    before = len(server.requests)
    report = gateway.send(server.announce("v15", bundles["1.5.0"]))
    assert report.step == "failed" and "not newer than 2.0.0" in report.reason, report
    assert gateway.manifest.version == "2.0.0"
    assert len(server.requests) == before  # refused before any download
    assert gateway.refused("downgrade") == 1


def test_the_highest_version_survives_a_restart(tmp_path, keys, bundles, server):
    first = Gateway(tmp_path, bundles["1.0.0"], policy(keys, server.origin))
    assert first.send(server.announce("v3", bundles["3.0.0"])).step == "active"
    first.send(server.announce("v1", bundles["1.0.0"], action="rollback"))
    assert first.manifest.version == "1.0.0"
    first.close()
    again = Gateway(tmp_path, bundles["1.0.0"], policy(keys, server.origin))
    try:
        report = again.send(server.announce("v2", bundles["2.0.0"]))
        assert report.step == "failed" and "not newer than 3.0.0" in report.reason, report
    finally:
        again.close()


def test_rollback_needs_a_signed_rollback_announcement(gateway, server, bundles, keys):
    assert gateway.send(server.announce("v2", bundles["2.0.0"])).step == "active"
    forged = server.announce("v1", bundles["1.0.0"], action="rollback")
    outsider = sign_announcement(load_private_key(keys["outsider"][0]),
                                 **forged.model_dump(exclude={"key_id", "signature"}))
    report = gateway.send(outsider)
    assert report.step == "failed" and "not trusted" in report.reason, report
    assert report.rollout_id is None  # an unauthenticated announcement names no rollout
    # the trusted key's id on an outsider's signature does not help either
    report = gateway.send(outsider.model_copy(update={"key_id": forged.key_id}))
    assert report.step == "failed" and "does not verify" in report.reason, report
    assert gateway.manifest.version == "2.0.0"
    assert gateway.refused("unknown-key") == 1 and gateway.refused("bad-signature") == 1
    report = gateway.send(server.announce("v1", bundles["1.0.0"], action="rollback"))
    assert report.step == "rolled-back" and gateway.manifest.version == "1.0.0", report


@pytest.mark.parametrize("field, value", [
    ("url", "http://127.0.0.1:9/elsewhere.tar"), ("version", "3.0.0"),
    ("action", "shadow"), ("sha256", "0" * 64), ("expires_at", 4e9)])
def test_an_announcement_changed_after_signing_is_refused(gateway, server, bundles, field,
                                                          value):
    ann = server.announce("v2", bundles["2.0.0"])
    report = gateway.send(ann.model_copy(update={field: value}))
    assert report.step == "failed" and "does not verify" in report.reason, report
    assert server.requests == [] and gateway.manifest.version == "1.0.0"


def test_an_unsigned_announcement_of_the_old_format_is_refused(gateway, server, bundles):
    ann = server.announce("v2", bundles["2.0.0"]).model_dump(
        exclude={"key_id", "issued_at", "expires_at", "gateway"})
    ann["signature"] = (bundles["2.0.0"] / "manifest.sig").read_text().strip()
    report = gateway.send(ann)
    assert report.step == "failed" and "malformed" in report.reason, report
    assert server.requests == [] and gateway.refused("malformed") == 1


def test_an_announcement_for_another_gateway_is_refused(gateway, server, bundles):
    report = gateway.send(server.announce("v2", bundles["2.0.0"], gateway="gw-other"))
    assert report.step == "failed" and "for gateway gw-other" in report.reason, report
    assert server.requests == []


def test_expired_and_future_announcements_are_refused(gateway, server, bundles):
    now = time.time()
    report = gateway.send(server.announce("v2", bundles["2.0.0"], issued_at=now - 7200,
                                          expires_at=now - 3600))
    assert report.step == "failed" and "expired" in report.reason, report
    report = gateway.send(server.announce("v2", bundles["2.0.0"], issued_at=now + 3600,
                                          expires_at=now + 7200))
    assert report.step == "failed" and "in the future" in report.reason, report
    assert server.requests == [] and gateway.refused("expired") == 1
    assert gateway.refused("not-yet-valid") == 1


def test_a_replayed_announcement_is_refused_and_a_repeated_one_ignored(gateway, server,
                                                                       bundles):
    old = server.announce("v2", bundles["2.0.0"])
    assert gateway.send(old).step == "active"
    assert gateway.send(server.announce("v1", bundles["1.0.0"], action="rollback")
                        ).step == "rolled-back"
    # the captured install of 2.0.0, published again, must not undo the rollback
    report = gateway.send(old)
    assert report.step == "failed" and "not newer than the last one" in report.reason, report
    assert gateway.manifest.version == "1.0.0" and gateway.refused("replayed") == 1
    # the announcement last handled, as a broker re-delivers it at every reconnect: no effect,
    # no report (the updater is restarted, as after a reboot, so only the disk remembers)
    last = server.announce("v1b", bundles["1.0.0"], action="rollback")
    gateway.send(last)
    count = len(gateway.reports)
    gateway.updater.last_seen = None
    gateway.updater.on_message(topics.model(GW), codec.encode_json(last))
    time.sleep(1.0)
    assert len(gateway.reports) == count


def test_a_revoked_key_is_refused_even_while_still_trusted(tmp_path, keys, bundles, server):
    cloud_fp = key_fingerprint(keys["cloud"][1])
    g = Gateway(tmp_path, bundles["1.0.0"], policy(keys, server.origin, revoked=(cloud_fp,)))
    try:
        report = g.send(server.announce("v2", bundles["2.0.0"]))
        assert report.step == "failed" and "revoked" in report.reason, report
        assert g.refused("revoked-key") == 1 and server.requests == []
    finally:
        g.close()


def test_a_bundle_signed_by_a_revoked_key_is_refused_and_removed(tmp_path, keys, bundles,
                                                                 server):
    # the bundle key is revoked by its PEM path; announcements still come from the cloud key
    g = Gateway(tmp_path, bundles["1.0.0"], OtaPolicy(
        bundle_keys=KeyRing([keys["bundle"][1], keys["outsider"][1]], [keys["bundle"][1]]),
        announcement_keys=KeyRing([keys["cloud"][1]]),
        downloads=DownloadPolicy(server.origin, TOKEN)))
    try:
        report = g.send(server.announce("v2", bundles["2.0.0"]))
        assert report.step == "failed" and "any trusted key" in report.reason, report
        assert installed(g) == [] and g.refused("bundle") == 1
    finally:
        g.close()


def test_the_token_goes_to_no_other_host_or_scheme(gateway, server, bundles, keys):
    other = BundleServer(TOKEN, keys["cloud"][0], gateway=GW)  # another origin (port)
    try:
        data_ann = server.announce("v2", bundles["2.0.0"])
        other.files["/v2.tar"] = server.files["/v2.tar"]
        for url in (f"{other.origin}/v2.tar",
                    server.origin.replace("http://", "https://") + "/v2.tar",
                    server.origin.replace("127.0.0.1", "localhost") + "/v2.tar",
                    f"http://{TOKEN}@127.0.0.1:{other.httpd.server_port}/v2.tar",
                    "ftp://127.0.0.1/v2.tar"):
            fields = data_ann.model_dump(exclude={"key_id", "signature"})
            ann = sign_announcement(load_private_key(keys["cloud"][0]),
                                    **{**fields, "url": url, "issued_at": time.time()})
            report = gateway.send(ann)
            assert report.step == "failed", (url, report)
            assert ("not the configured model server" in report.reason
                    or "refused" in report.reason or "no user" in report.reason), report
        assert other.requests == [] and server.requests == []
        assert gateway.refused("url") == 5
    finally:
        other.close()


def test_a_redirect_off_the_model_server_is_not_followed(gateway, server, bundles, keys):
    other = BundleServer(TOKEN, keys["cloud"][0], gateway=GW)
    try:
        ann = server.announce("v2", bundles["2.0.0"])
        other.files["/v2.tar"] = server.files["/v2.tar"]
        server.redirects["/v2.tar"] = f"{other.origin}/v2.tar"
        report = gateway.send(ann)
        assert report.step == "failed" and "redirect" in report.reason, report
        assert other.requests == []
    finally:
        other.close()


def test_file_urls_only_when_configured(tmp_path, keys, bundles, server):
    ann = server.announce("v2", bundles["2.0.0"])
    local = tmp_path / "v2.tar"
    local.write_bytes(server.files["/v2.tar"])
    fields = {**ann.model_dump(exclude={"key_id", "signature"}), "url": local.as_uri()}
    refusing = Gateway(tmp_path / "a", bundles["1.0.0"], policy(keys, server.origin))
    try:
        report = refusing.send(sign_announcement(load_private_key(keys["cloud"][0]), **fields))
        assert report.step == "failed" and "file://" in report.reason, report
    finally:
        refusing.close()
    allowing = Gateway(tmp_path / "b", bundles["1.0.0"],
                       policy(keys, server.origin, allow_file_urls=True))
    try:
        fields["issued_at"] = time.time()
        report = allowing.send(sign_announcement(load_private_key(keys["cloud"][0]), **fields))
        assert report.step == "active" and allowing.manifest.version == "2.0.0", report
    finally:
        allowing.close()


def test_version_dot_dot_wipes_nothing(gateway, server, bundles, keys):
    assert gateway.send(server.announce("v2", bundles["2.0.0"])).step == "active"
    state = gateway.store.state_file.read_text()
    body = server.announce("v3", bundles["3.0.0"]).model_dump(exclude={"signature"})
    for version in ("..", ".", "../bundles", "a/b"):
        body.update(version=version, issued_at=time.time())
        signature = load_private_key(keys["cloud"][0]).sign(canonical_json(body))
        report = gateway.send({**body, "signature": base64.b64encode(signature).decode()})
        assert report.step == "failed" and "malformed" in report.reason, report
    assert gateway.store.state_file.read_text() == state
    assert installed(gateway) == ["2.0.0"] and gateway.store.root.parent.is_dir()
    assert gateway.refused("malformed") == 4
    assert "/v3.tar" not in [path for path, _ in server.requests]


def test_a_bundle_that_fails_verification_is_removed(gateway, server, bundles, tmp_path,
                                                     keys):
    tampered = variant(bundles["1.0.0"], tmp_path / "t", "2.0.0", keys["bundle"][0])
    flip_byte(tampered / json.loads((tampered / "manifest.json").read_text())["edge"]["file"])
    report = gateway.send(server.announce("t", tampered))
    assert report.step == "failed" and "file changed after signing" in report.reason, report
    assert installed(gateway) == []  # neither the bundle nor a .partial folder stays
    assert gateway.refused("bundle") == 1
    unsigned = variant(bundles["1.0.0"], tmp_path / "u", "2.0.0", keys["outsider"][0])
    report = gateway.send(server.announce("u", unsigned))
    assert report.step == "failed" and "any trusted key" in report.reason, report
    assert installed(gateway) == []


def test_a_tar_with_a_bad_entry_leaves_no_partial_folder(gateway, server, bundles):
    ann = server.announce("v2", bundles["2.0.0"])
    bad = b"this is not a tar archive" * 100
    server.files["/v2.tar"] = bad
    fields = {**ann.model_dump(exclude={"key_id", "signature"}),
              "sha256": hashlib.sha256(bad).hexdigest(), "size": len(bad)}
    report = gateway.send(sign_announcement(server.signing_key, **fields))
    assert report.step == "failed" and "not a valid tar" in report.reason, report
    assert installed(gateway) == []


# ------------------------------------------------------------------ the pure parts, directly

@pytest.mark.parametrize("version", ["..", ".", "", "a/b", "../x", "fd001-1.0/..", "v2 ",
                                     "1..2", "-1", "x" * 61 + "-1.0", "tiny-bad", "1.0\n"])
def test_the_version_pattern_admits_no_path_parts(version):
    assert not is_version(version)
    payload = json.dumps({"gateway": GW, "version": version, "url": "https://x",
                          "sha256": "0" * 64, "size": 1, "issued_at": 1, "expires_at": 2,
                          "key_id": "0" * 16, "signature": "x"}).encode()
    with pytest.raises(ContractError, match="version"):
        codec.decode_json(payload, ModelAnnouncement)


@pytest.mark.parametrize("newer, older", [
    ("2.0.0", "1.0.0"), ("fd001-1.10", "fd001-1.9"), ("fd001-20261201", "fd001-1.0"),
    ("v10", "v9"), ("rollout-3", "rollout-2"), ("2.0.0", "2.0.0rc1")])
def test_versions_order_by_their_release_number(newer, older):
    assert is_version(newer) and is_version(older)
    assert is_newer(newer, older) and not is_newer(older, newer)
    assert not is_newer(newer, newer)


def test_the_signed_bytes_are_canonical_and_cover_every_field_but_the_signature(keys):
    ann = sign_announcement(load_private_key(keys["cloud"][0]), gateway=GW, version="2.0.0",
                            url="https://cloud.example/b.tar", sha256="a" * 64, size=10,
                            rollout_id="r1", issued_at=1.5, expires_at=2.5)
    body = json.loads(announcement_bytes(ann))
    assert set(body) == set(ModelAnnouncement.model_fields) - {"signature"}
    again = codec.decode_json(codec.encode_json(ann), ModelAnnouncement)
    assert announcement_bytes(again) == announcement_bytes(ann)
    assert b" " not in announcement_bytes(ann)


def test_the_cloud_starts_no_rollout_without_a_signing_key(tmp_path):
    store = SqliteStore(tmp_path / "cloud.db", "NORMAL")
    published: list[str] = []
    try:
        rollouts = Rollouts(store, lambda topic, payload: published.append(topic))
        for call in (lambda: rollouts.create("2.0.0", None, None, "http://cloud"),
                     lambda: rollouts.resume("r1", "http://cloud"),
                     lambda: rollouts.rollback("r1", "http://cloud")):
            with pytest.raises(RolloutError, match="rollouts.signing_key") as caught:
                call()
            assert caught.value.status == 409
        assert published == []
    finally:
        store.close()


def test_the_download_token_needs_a_model_server_in_the_configuration(tmp_path):
    with pytest.raises(ConfigError, match="model_server"):
        load_config(None, gateway_id=GW, bundle={"download_token": "secret-token"})
    with pytest.raises(ConfigError, match="model_server"):
        load_config(None, gateway_id=GW, bundle={"model_server": "https://cloud/path",
                                                 "download_token": "secret-token"})
    cfg = load_config(None, gateway_id=GW, bundle={"model_server": "https://cloud:8443",
                                                   "download_token": "secret-token"})
    assert cfg.bundle.model_server == "https://cloud:8443"


def test_a_missing_or_wrong_announcement_key_is_a_config_error(tmp_path, keys):
    from cloud_service.config import ConfigError as CloudConfigError
    from cloud_service.config import load_config as load_cloud_config

    base = {"api_token": "t" * 16}
    with pytest.raises(CloudConfigError, match="rollouts.signing_key.*cannot read"):
        load_cloud_config(None, **base, rollouts={"signing_key": str(tmp_path / "none.key")})
    with pytest.raises(CloudConfigError, match="rollouts.signing_key"):
        load_cloud_config(None, **base, rollouts={"signing_key": str(keys["cloud"][1])})
    cfg = load_cloud_config(None, **base, rollouts={"signing_key": str(keys["cloud"][0])})
    assert cfg.rollouts.signing_key == keys["cloud"][0]


def test_the_bundle_store_builds_no_path_outside_its_folder(tmp_path, bundles):
    store = BundleStore(tmp_path / "state", bundles["1.0.0"])
    store.activate("1.0.0", previous="1.0.0")
    for version in ("..", ".", "../state", "a/b", ".hidden"):
        with pytest.raises(UpdateError, match="cannot name a folder"):
            store.install(version, b"")
        with pytest.raises(UpdateError):
            store.discard(version)
    assert store.state_file.is_file() and store.root.is_dir()
