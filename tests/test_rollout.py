"""Model rollouts end to end: the cloud service (real HTTP, real broker, the real LSTM) rolls
signed bundles out to two edge agents running as separate processes, as a canary and to all,
refuses to let a corrupted download in, pauses, resumes and rolls back, and every tick still
reaches the cloud exactly once."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml

from cloud_service.config import RolloutsConfig
from contract import codec, topics
from contract.bundle import generate_keypair
from contract.payloads import AlertEvent, GatewayStatus
from tests.conftest import DEFAULT_BUNDLE
from tests.support.bundles import flip_byte, tar, variant
from tests.support.mqtt import Recorder
from tests.test_cloud_service import AUTH, TOKEN, Running, cloud_config, wait_until
from tests.test_edge_agent import start_agent, unit_lengths

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(), reason="no bundle"),
]
UNITS = [31, 34]
GATEWAYS = ["gw-a", "gw-b"]


def agent_config(tmp_path: Path, broker, data_dir: Path, gateway: str, bundle: Path,
                 pub: Path, model_server: str, rate: float = 6) -> Path:
    work = tmp_path / gateway
    work.mkdir()
    cfg = {
        "gateway_id": gateway,
        "broker": {"host": broker.host, "port": broker.port},
        "sources": [{"type": "cmapss", "file": str(data_dir / "test_FD001.txt"),
                     "units": UNITS, "rate": rate}],
        "bundle": {"path": str(bundle), "trusted_keys": [str(pub)], "download_token": TOKEN,
                   "model_server": model_server, "state_dir": str(work / "state")},
        "outbox": {"path": str(work / "outbox.db"), "batch_max_age": 0.2},
    }
    path = work / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def first_bundle(tmp_path: Path, version: str) -> tuple[Path, Path, Path]:
    """A fresh signing key pair and the default bundle re-signed with it as `version`."""
    key, pub = tmp_path / "k.key", tmp_path / "k.pub"
    generate_keypair(key, pub)
    return key, pub, variant(DEFAULT_BUNDLE, tmp_path / "bundles" / "v1", version, key)


def signing_cloud(tmp_path: Path, broker, bundle: Path, pub: Path, key: Path) -> Running:
    """The cloud service, signing its announcements with `key` (the gateways trust its public
    half, as they do for bundles)."""
    cfg = cloud_config(tmp_path, broker, bundle, pub)
    return Running(cfg.model_copy(update={"rollouts": RolloutsConfig(signing_key=key)}))


def test_canary_then_fleet_rollout_refused_download_pause_resume_and_rollback(
        tmp_path, broker, data_dir):
    key, pub, v1 = first_bundle(tmp_path, "rollout-1")
    b = tmp_path / "bundles"
    v2 = variant(v1, b / "v2", "rollout-2", key)
    v3 = variant(v1, b / "v3", "rollout-3", key)

    cloud = signing_cloud(tmp_path, broker, v1, pub, key)  # scores with v1, registers it
    http = cloud.http
    agents = {g: start_agent(agent_config(tmp_path, broker, data_dir, g, v1, pub,
                                          cloud.server.url))
              for g in GATEWAYS}
    try:
        wait_until(lambda: {g["gateway"] for g in http.get("/api/v1/gateways").json()
                            if g["online"]} >= set(GATEWAYS), 60, "both gateways online")
        for folder in (v2, v3):
            r = http.post("/api/v1/models", content=tar(folder),
                          headers={**AUTH, "Content-Type": "application/x-tar"})
            assert r.status_code == 201, r.text

        def rollout(body: dict) -> dict:
            r = http.post("/api/v1/rollouts", json=body, headers=AUTH)
            assert r.status_code == 201, r.text
            return r.json()

        def wait_steps(rollout_id: str, want: dict[str, str], timeout: float = 60) -> dict:
            def steps() -> dict[str, str]:
                view = http.get(f"/api/v1/rollouts/{rollout_id}").json()
                return {t["gateway"]: t["step"] for t in view["targets"]}
            wait_until(lambda: steps() == want, timeout, f"rollout {rollout_id} at {want}")
            return http.get(f"/api/v1/rollouts/{rollout_id}").json()

        def versions(gateways=GATEWAYS) -> dict[str, str]:
            return {g["gateway"]: g["model_version"] for g in http.get("/api/v1/gateways").json()
                    if g["gateway"] in gateways}

        # a canary at 50 % reaches one of the two gateways
        canary = rollout({"version": "rollout-2", "percent": 50})
        assert len(canary["targets"]) == 1 and canary["targets"][0]["from_version"] == "rollout-1"
        first = canary["targets"][0]["gateway"]
        other = next(g for g in GATEWAYS if g != first)
        view = wait_steps(canary["id"], {first: "active"})
        assert view["complete"] and view["steps"] == {"active": 1}
        assert versions() == {first: "rollout-2", other: "rollout-1"}

        # then the whole fleet
        fleet = rollout({"version": "rollout-2"})
        assert {t["gateway"]: t["from_version"] for t in fleet["targets"]} == {
            first: "rollout-2", other: "rollout-1"}
        wait_steps(fleet["id"], {g: "active" for g in GATEWAYS})
        assert versions() == {g: "rollout-2" for g in GATEWAYS}

        # a download that does not match the registered hash is refused; the old model stays
        flip_byte(tmp_path / "bundles" / "rollout-3.tar", 2000)
        bad = rollout({"version": "rollout-3", "gateways": [first]})
        view = wait_steps(bad["id"], {first: "failed"})
        assert "SHA-256" in view["targets"][0]["reason"], view
        assert not view["complete"]
        assert versions()[first] == "rollout-2"

        # pause withdraws a retained announcement a gateway has not acted on; resume restores it
        offline = "gw-offline"
        pub_client = Recorder(broker.host, broker.port, [])
        pub_client.client.publish(topics.status(offline), codec.encode_json(GatewayStatus(
            gateway=offline, online=False, time=time.time(), model_version="rollout-1")),
            qos=1, retain=True).wait_for_publish(5)
        pub_client.close()
        wait_until(lambda: offline in versions([offline]), 30, "offline gateway known")
        held = rollout({"version": "rollout-2", "gateways": [offline]})
        assert held["steps"] == {"announced": 1}
        assert retained(broker, topics.model(offline))["version"] == "rollout-2"
        r = http.post(f"/api/v1/rollouts/{held['id']}/pause", headers=AUTH)
        assert r.status_code == 200 and r.json()["state"] == "paused", r.text
        assert r.json()["steps"] == {"paused": 1}
        assert retained(broker, topics.model(offline)) is None
        assert http.post(f"/api/v1/rollouts/{held['id']}/pause",
                         headers=AUTH).status_code == 409
        r = http.post(f"/api/v1/rollouts/{held['id']}/resume", headers=AUTH)
        assert r.status_code == 200 and r.json()["steps"] == {"announced": 1}, r.text
        assert retained(broker, topics.model(offline))["version"] == "rollout-2"

        # rolling the canary back sends its gateway to the version it ran before
        r = http.post(f"/api/v1/rollouts/{canary['id']}/rollback", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["targets"][0]["step"] in ("rolling-back", "rolled-back")
        wait_steps(canary["id"], {first: "rolled-back"})
        assert versions() == {first: "rollout-1", other: "rollout-2"}
        assert http.post(f"/api/v1/rollouts/{canary['id']}/rollback",
                         headers=AUTH).status_code == 409

        # every tick of both gateways reached the cloud exactly once, scored by one model each
        want = {f"engine-{u}": n for u, n in unit_lengths(data_dir).items() if u in UNITS}

        def ticks(gw: str, asset: str) -> list[dict]:
            return http.get(f"/api/v1/assets/{gw}/{asset}/ticks",
                            params={"limit": 5000}).json()["items"]
        wait_until(lambda: all(len(ticks(g, a)) >= n for g in GATEWAYS
                               for a, n in want.items()), 120, "every tick in the cloud")
        for g in GATEWAYS:
            for a, n in want.items():
                items = ticks(g, a)
                assert [t["seq"] for t in items] == list(range(n)), (g, a)
                used = [t["model_version"] for t in items]
                assert "rollout-2" in used, (g, a)  # the swap happened while ticks flowed
                # versions change in runs, never interleaved: one model per tick, in order
                runs = [v for i, v in enumerate(used) if i == 0 or used[i - 1] != v]
                assert len(runs) == len(set(runs)) or runs == ["rollout-1", "rollout-2",
                                                               "rollout-1"], (g, a, runs)
    finally:
        for proc in agents.values():
            proc.send_signal(signal.SIGTERM)
        for proc in agents.values():
            try:
                proc.communicate(timeout=30)
            except Exception:
                proc.kill()
        cloud.close()


def retained(broker, topic: str) -> dict | None:
    """The retained message on `topic` as a new subscriber sees it (None: there is none)."""
    rec = Recorder(broker.host, broker.port, [topic])
    rec.wait_for(lambda ms: len(ms) > 0, timeout=1.5)
    messages = [m for m in rec.messages if m.payload]
    rec.close()
    return json.loads(messages[-1].payload) if messages else None


def test_shadow_rollout_scores_beside_the_active_model_then_ends_or_is_promoted(
        tmp_path, broker, data_dir):
    key, pub, v1 = first_bundle(tmp_path, "shadow-1")

    def float_edge(folder: Path, doc: dict) -> None:  # a different model: the float TFLite one
        doc["edge"] = {"file": "model_float.tflite", "quantization": "float32"}
    v2 = variant(v1, tmp_path / "bundles" / "v2", "shadow-2", key, float_edge)
    gw = "gw-shadow"
    cloud = signing_cloud(tmp_path, broker, v1, pub, key)
    http = cloud.http
    alerts = Recorder(broker.host, broker.port, [topics.subscription("alert", gw)])
    agent = start_agent(agent_config(tmp_path, broker, data_dir, gw, v1, pub,
                                     cloud.server.url, rate=8))
    want = {f"engine-{u}": n for u, n in unit_lengths(data_dir).items() if u in UNITS}

    def steps(rollout_id: str) -> dict[str, str]:
        view = http.get(f"/api/v1/rollouts/{rollout_id}").json()
        return {t["gateway"]: t["step"] for t in view["targets"]}

    def report() -> dict | None:
        r = http.get("/api/v1/models/shadow-2/shadow")
        return r.json() if r.status_code == 200 else None

    def last_seqs() -> dict[str, int]:
        return {a["asset"]: a["last_seq"] for a in http.get("/api/v1/assets").json()
                if a["gateway"] == gw}

    try:
        wait_until(lambda: any(g["gateway"] == gw and g["online"]
                               for g in http.get("/api/v1/gateways").json()), 60, "gateway")
        r = http.post("/api/v1/models", content=tar(v2),
                      headers={**AUTH, "Content-Type": "application/x-tar"})
        assert r.status_code == 201, r.text
        assert http.get("/api/v1/models/shadow-2/shadow").status_code == 404

        r = http.post("/api/v1/rollouts", json={"version": "shadow-2", "action": "shadow"},
                      headers=AUTH)
        assert r.status_code == 201, r.text
        shadow = r.json()
        assert shadow["action"] == "shadow"
        wait_until(lambda: steps(shadow["id"]) == {gw: "shadow"}, 60, "the shadow run")
        assert http.get(f"/api/v1/rollouts/{shadow['id']}").json()["complete"]
        wait_until(lambda: (rep := report()) is not None and len(rep["assets"]) == 2
                   and all(a["windows"] >= 20 and a["cloud_scored"] >= 10
                           for a in rep["assets"]), 60, "shadow scores of both assets")
        rep = report()
        print("\nshadow report:", json.dumps({k: v for k, v in rep.items() if k != "assets"}))
        for a in rep["assets"]:
            assert a["active_versions"] == "shadow-1"
            assert a["agreement_active"] >= 0.9 and a["mean_abs_diff_active"] < 0.05, a
            assert a["agreement_cloud"] is not None and a["rul_rmse_cloud"] is not None, a
        # the active model still runs the gateway: versions and alerts are its own
        assert {g["gateway"]: g["model_version"] for g in http.get("/api/v1/gateways").json()
                }[gw] == "shadow-1"

        # rolling the shadow run back withdraws it: no more shadow scores arrive
        r = http.post(f"/api/v1/rollouts/{shadow['id']}/rollback", headers=AUTH)
        assert r.status_code == 200 and steps(shadow["id"]) == {gw: "cleared"}, r.text
        time.sleep(1.5)  # the withdrawal reaches the agent; ticks in flight land
        stopped = {a["asset"]: a["last_seq"] for a in report()["assets"]}
        seen = last_seqs()
        wait_until(lambda: all(last_seqs()[a] >= seen[a] + 10 for a in stopped), 60,
                   "ticks after the shadow run ended")
        assert {a["asset"]: a["last_seq"] for a in report()["assets"]} == stopped

        # and promoting the model swaps it in for good
        r = http.post("/api/v1/rollouts", json={"version": "shadow-2"}, headers=AUTH)
        assert r.status_code == 201, r.text
        wait_until(lambda: steps(r.json()["id"]) == {gw: "active"}, 60, "promotion")

        def ticks(asset: str) -> list[dict]:
            return http.get(f"/api/v1/assets/{gw}/{asset}/ticks",
                            params={"limit": 5000}).json()["items"]
        wait_until(lambda: all(len(ticks(a)) >= n for a, n in want.items()), 120,
                   "every tick in the cloud")
        for a, n in want.items():
            items = ticks(a)
            assert [t["seq"] for t in items] == list(range(n)), a
            used = [t["model_version"] for t in items]
            assert "shadow-2" in used and used[-1] == "shadow-2", a
        promoted = {a: min(t["seq"] for t in ticks(a) if t["model_version"] == "shadow-2")
                    for a in want}
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        alerts.close()
        cloud.close()
    events = [codec.decode_json(m.payload, AlertEvent) for m in alerts.messages]
    assert events, "no edge alerts"
    for e in events:  # the shadow model never alerted: every alert is the active model's
        assert e.model_version == ("shadow-2" if e.seq >= promoted[e.asset] else "shadow-1"), e
