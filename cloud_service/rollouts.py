"""Model rollouts: which gateways get a registered bundle, the retained announcements that tell
them (`pdm/v1/{gateway}/model`), and pause, resume and rollback.

The cloud records what it did per gateway (`announced`, `paused`, `cleared`, `rolling-back`);
the gateways' own reports on `pdm/v1/{gateway}/update` (`downloading`, `verified`, `active`,
`shadow`, `failed` with the reason, `rolled-back`) are written over those steps by the ingest
consumer. Announcements are retained, so a gateway that is offline now picks its up when it
reconnects. A "shadow" rollout has gateways run the model beside their active one without
alerting; rolling it back withdraws the announcement, which ends the shadow run.

Every announcement is signed (`contract.ota`) with `rollouts.signing_key`, names its gateway and
carries its issue time and expiry, so a gateway acts only on what this service said, once, while
it is fresh. Without a signing key no rollout starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_service.store import ModelRow, RolloutRow, RolloutStore, RolloutTargetRow, TargetRequest
from contract import codec, topics
from contract.ota import sign_announcement
from contract.versions import is_version

# Steps after which a gateway may be running the new model: a rollback must tell it to go back.
STARTED = ("downloading", "verified", "active")
Publish = Callable[[str, bytes], None]  # retained, QoS 1; raises unless the broker acked


class RolloutError(ValueError):
    """A rollout request that cannot be carried out; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def canary(gateways: Sequence[str], percent: float, rollout_id: str) -> list[str]:
    """ceil(n * percent / 100) of the gateways (at least one), picked by a hash of the rollout
    id and the gateway id: the same rollout always picks the same ones, different rollouts
    spread over the fleet."""
    n = max(1, math.ceil(len(gateways) * percent / 100))
    ranked = sorted(gateways, key=lambda g: hashlib.sha256(f"{rollout_id}/{g}".encode()).digest())
    return sorted(ranked[:n])


def summary(targets: Sequence[RolloutTargetRow]) -> dict[str, int]:
    return dict(Counter(t["step"] for t in targets))


class Rollouts:
    def __init__(self, store: RolloutStore, publish: Publish,
                 signing_key: Ed25519PrivateKey | None = None,
                 ttl: float = 7 * 24 * 3600) -> None:
        self.store = store
        self.publish = publish
        self.signing_key, self.ttl = signing_key, ttl
        self._last_issued = 0.0

    # -- reads -----------------------------------------------------------------------------

    def view(self, rollout_id: str) -> dict:
        row = self.store.rollout(rollout_id)
        if row is None:
            raise RolloutError(f"no rollout {rollout_id!r}; GET /api/v1/rollouts lists them", 404)
        targets = self.store.rollout_targets(rollout_id)
        done = "shadow" if row["action"] == "shadow" else "active"
        return {**row, "requested": json.loads(row["requested"]), "targets": targets,
                "steps": summary(targets),
                "complete": all(t["step"] == done for t in targets)}

    def list(self) -> list[dict]:
        return [self.view(r["id"]) for r in self.store.rollouts()]

    # -- writes ----------------------------------------------------------------------------

    def create(self, version: str, gateways: Sequence[str] | None, percent: float | None,
               base_url: str, action: str = "install") -> dict:
        self._check_signing()
        if not is_version(version):
            raise RolloutError(f"model {version!r} cannot be rolled out: gateways take only "
                               "versions with a release number to order them by (such as "
                               "fd001-1.2 or 2.0.0)", 422)
        model = self.store.model(version)
        if model is None:
            raise RolloutError(f"no model {version!r} is registered; upload it first "
                               "(POST /api/v1/models)", 404)
        known = {g["gateway"]: g for g in self.store.gateways()}
        rollout_id = uuid.uuid4().hex[:12]
        if gateways:
            unknown = sorted(set(gateways) - set(known))
            if unknown:
                raise RolloutError(f"unknown gateway(s) {', '.join(unknown)}: a gateway is known "
                                   "once its status or uplink has reached the cloud", 422)
            chosen = sorted(set(gateways))
        else:
            if not known:
                raise RolloutError("no gateways are known yet: a gateway is known once its "
                                   "status or uplink has reached the cloud", 422)
            chosen = sorted(known)
            if percent is not None:
                chosen = canary(chosen, percent, rollout_id)
        now = time.time()
        targets = [TargetRequest(gateway=g, from_version=known[g]["model_version"],
                                 step="announced") for g in chosen]
        self.store.create_rollout(RolloutRow(
            id=rollout_id, version=version, action=action, state="active", created_at=now,
            updated_at=now, percent=percent,
            requested=json.dumps({"gateways": gateways, "percent": percent, "action": action})),
            targets)
        steps = {}
        for g in chosen:
            steps[g] = self._announce(g, model, action, rollout_id, base_url)
        self.store.update_rollout(rollout_id, "active", steps)
        return self.view(rollout_id)

    def pause(self, rollout_id: str) -> dict:
        """Withdraw the announcement from the gateways that have not started yet."""
        view = self._in_state(rollout_id, "active", "pause")
        steps = {t["gateway"]: self._clear(t["gateway"], "paused")
                 for t in view["targets"] if t["step"] == "announced"}
        self.store.update_rollout(rollout_id, "paused", steps)
        return self.view(rollout_id)

    def resume(self, rollout_id: str, base_url: str) -> dict:
        self._check_signing()
        view = self._in_state(rollout_id, "paused", "resume")
        model = self._model(view["version"])
        steps = {t["gateway"]: self._announce(t["gateway"], model, view["action"], rollout_id,
                                              base_url)
                 for t in view["targets"] if t["step"] in ("paused", "unannounced")}
        self.store.update_rollout(rollout_id, "active", steps)
        return self.view(rollout_id)

    def rollback(self, rollout_id: str, base_url: str) -> dict:
        """Gateways that started the update go back to the version they ran before; the
        announcement is withdrawn from the others."""
        self._check_signing()
        view = self.view(rollout_id)
        if view["state"] == "rolled-back":
            raise RolloutError(f"rollout {rollout_id} is already rolled back")
        # a shadow run never changed the active model: withdrawing its announcement ends it
        back = [t for t in view["targets"]
                if t["step"] in STARTED and view["action"] != "shadow"]
        missing = sorted(t["gateway"] for t in back if not is_version(t["from_version"])
                         or self.store.model(t["from_version"]) is None)
        if missing:
            raise RolloutError(
                f"cannot roll back {', '.join(missing)}: the version they ran before is unknown "
                "or not registered here (upload that bundle, then roll back again)")
        steps = {}
        for t in view["targets"]:
            if t in back:
                steps[t["gateway"]] = self._announce(
                    t["gateway"], self._model(t["from_version"]), "rollback", rollout_id,
                    base_url)
            elif t["step"] != "cleared":
                steps[t["gateway"]] = self._clear(t["gateway"], "cleared")
        self.store.update_rollout(rollout_id, "rolled-back", steps)
        return self.view(rollout_id)

    # -- helpers ---------------------------------------------------------------------------

    def _check_signing(self) -> None:
        if self.signing_key is None:
            raise RolloutError(
                "no rollouts.signing_key is configured, and gateways act only on signed "
                "announcements: set it (or PDM_CLOUD_ROLLOUTS__SIGNING_KEY) to an Ed25519 "
                "private key made with `python -m converter keygen`, whose public key the "
                "gateways trust", 409)

    def _issue_time(self) -> float:
        # strictly increasing, so a gateway never takes two announcements for one replay
        self._last_issued = max(time.time(), self._last_issued + 1e-3)
        return self._last_issued

    def _in_state(self, rollout_id: str, state: str, verb: str) -> dict:
        view = self.view(rollout_id)
        if view["state"] != state:
            raise RolloutError(f"rollout {rollout_id} is {view['state']}; only a rollout that "
                               f"is {state} can {verb}")
        return view

    def _model(self, version: str) -> ModelRow:
        model = self.store.model(version)
        if model is None:
            raise RolloutError(f"model {version!r} is no longer registered")
        return model

    def _announce(self, gateway: str, model: ModelRow, action: str, rollout_id: str,
                  base_url: str) -> tuple[str, str | None]:
        assert self.signing_key is not None  # _check_signing ran first
        issued = self._issue_time()
        ann = sign_announcement(
            self.signing_key, action=action, gateway=gateway, version=model["version"],
            url=f"{base_url.rstrip('/')}/api/v1/models/{model['version']}/bundle",
            sha256=model["sha256"], size=model["size"], rollout_id=rollout_id,
            issued_at=issued, expires_at=issued + self.ttl)
        try:
            self.publish(topics.model(gateway), codec.encode_json(ann))
        except Exception as exc:
            return ("unannounced", f"the broker did not take the announcement: {exc}")
        return ("rolling-back" if action == "rollback" else "announced", None)

    def _clear(self, gateway: str, step: str) -> tuple[str, str | None]:
        try:
            self.publish(topics.model(gateway), b"")  # an empty retained message removes it
        except Exception as exc:
            return ("unannounced", f"the broker did not take the withdrawal: {exc}")
        return (step, None)
