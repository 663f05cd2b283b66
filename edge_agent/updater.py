"""Over-the-air model updates.

The cloud announces a bundle (retained `ModelAnnouncement` on `pdm/v1/{gateway}/model`). The
agent downloads it (bounded, retried), checks the tar's SHA-256 and the Ed25519 signature
against its trusted keys, refuses a manifest it cannot serve (other features or window), loads
the edge model, self-tests it on the windows it holds, and only then asks the main loop to swap
it in between two ticks (or, for a "shadow" announcement, runs it beside the active model
without alerting from it, until the next announcement). Each step is reported on
`pdm/v1/{gateway}/update`. Bundles are kept under `state_dir/bundles/<version>`;
`state_dir/active.json` remembers the active and previous versions, so a restart keeps the
update and a rollback has something to go back to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract import codec, topics
from contract.bundle import MAX_BUNDLE_BYTES, read_manifest, unpack_bundle, verify_bundle
from contract.errors import ContractError
from contract.manifest import SIGNATURE, Manifest
from contract.payloads import ModelAnnouncement, UpdateReport
from edge_agent.scorer import ModelLoadError, Scorer

log = logging.getLogger(__name__)


class UpdateError(RuntimeError):
    """An update step failed; the message is the reason reported to the cloud."""


class BundleStore:
    """Installed bundles and which one is active (survives restarts)."""

    def __init__(self, state_dir: Path, shipped: Path) -> None:
        self.root = state_dir / "bundles"
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_file = state_dir / "active.json"
        self.shipped = shipped
        self.shipped_version = read_manifest(shipped).version

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def path_of(self, version: str | None) -> Path:
        if version in (None, self.shipped_version):
            return self.shipped
        return self.root / version

    def active(self) -> Path:
        return self.path_of(self._state().get("active"))

    def previous(self) -> str | None:
        return self._state().get("previous")

    def install(self, version: str, tar: bytes) -> Path:
        tmp = self.root / f".{version}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        unpack_bundle(tar, tmp)
        final = self.root / version
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final

    def activate(self, version: str, previous: str) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"active": version, "previous": previous}))
        tmp.replace(self.state_file)  # atomic: a crash leaves the old or the new state


@dataclass
class Candidate:
    """A verified, loaded, self-tested bundle waiting to be swapped in."""

    version: str
    manifest: Manifest
    scorer: Scorer
    path: Path


def download(url: str, token: str | None, max_bytes: int, attempts: int = 3,
             timeout: float = 30) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    error: Exception | None = None
    for attempt in range(attempts):
        try:
            req = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                data = resp.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise UpdateError(f"bundle is larger than the {max_bytes} byte limit")
            return data
        except UpdateError:
            raise
        except Exception as exc:  # network errors of every kind: retry, then give up
            error = exc
            time.sleep(min(2**attempt, 10))
    raise UpdateError(f"download of {url} failed after {attempts} attempts: {error}")


def self_test(new: Scorer, old: Scorer, windows: list[np.ndarray], manifest: Manifest) -> str:
    """Finite outputs of the right shape, and decisions that agree with the running model on
    the held windows as often as the new manifest's tolerance asks. Returns a summary."""
    neutral = np.asarray(manifest.normalisation.offset, np.float32)  # normalises to zeros
    probe = windows or [np.tile(neutral, (manifest.window, 1))]
    agree = 0
    new_cut, old_cut = manifest.thresholds.decision, old.manifest.thresholds.decision
    for w in probe:
        y = new.raw(new.normalise(w))
        if y.shape != (2,) or not np.isfinite(y).all():
            raise UpdateError(f"self-test: the new model returned {y!r} for a held window")
        agree += (y[0] >= new_cut) == (old.raw(old.normalise(w))[0] >= old_cut)
    if not windows:
        return "self-test on a neutral window only (no windows held yet)"
    share = agree / len(windows)
    need = manifest.tolerances.decision_agreement
    if share < need:
        raise UpdateError(f"self-test: decisions agree with the running model on {share:.1%} "
                          f"of {len(windows)} held windows, the manifest asks for {need:.1%}")
    return f"self-test passed: {share:.1%} agreement on {len(windows)} held windows"


class Updater(threading.Thread):
    """Works announcements off one at a time, away from the network and scoring threads."""

    def __init__(self, gateway: str, store: BundleStore, trusted_keys: list[Path],
                 token: str | None, current: Callable[[], tuple[Manifest, Scorer, str]],
                 held_windows: Callable[[], list[np.ndarray]],
                 swap: Callable[[Candidate], None], publish: Callable[[str, bytes], None],
                 stop: threading.Event,
                 shadow: Callable[[Candidate | None], None] = lambda c: None) -> None:
        super().__init__(name="updater", daemon=True)
        self.gateway, self.store, self.trusted_keys = gateway, store, trusted_keys
        self.token = token
        self.current, self.held_windows, self.swap = current, held_windows, swap
        self.shadow = shadow
        self.publish, self.stop_event = publish, stop
        self.inbox: queue.Queue[ModelAnnouncement | None] = queue.Queue()
        self.failures = 0
        self.last_seen: str | None = None

    def on_message(self, topic: str, payload: bytes) -> None:
        if not payload:  # the announcement was withdrawn: nothing to do, no shadow to run
            self.last_seen = None
            self.inbox.put(None)
            return
        try:
            ann = codec.decode_json(payload, ModelAnnouncement)
        except ContractError as exc:
            log.warning("ignored a bad model announcement: %s", exc)
            return
        # Retained messages come again at every reconnect; a new rollout of the same bundle
        # is new (it gets its own report).
        key = f"{ann.rollout_id}:{ann.action}:{ann.version}:{ann.sha256}"
        if key != self.last_seen:
            self.last_seen = key
            self.inbox.put(ann)

    def report(self, ann: ModelAnnouncement, step: str, reason: str | None = None) -> None:
        self.publish(topics.update(self.gateway), codec.encode_json(UpdateReport(
            gateway=self.gateway, version=ann.version, step=step, reason=reason,
            rollout_id=ann.rollout_id, time=time.time())))
        (log.warning if step == "failed" else log.info)(
            "model %s: %s%s", ann.version, step, f" ({reason})" if reason else "")

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                ann = self.inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self.handle(ann)
            except Exception as exc:  # never let one bad bundle stop the updater
                self.failures += 1
                if ann is None:
                    log.exception("stopping the shadow model failed")
                    continue
                if not isinstance(exc, UpdateError):
                    log.exception("update to %s failed", ann.version)
                    exc = f"unexpected error: {exc}"
                self.report(ann, "failed", str(exc))

    def handle(self, ann: ModelAnnouncement | None) -> None:
        if ann is not None and ann.action == "shadow":
            self.start_shadow(ann)
            return
        self.shadow(None)  # a withdrawn or newer announcement ends the shadow run
        if ann is None:
            return
        if ann.action == "rollback":
            self.rollback(ann)
        else:
            self.update(ann)

    def update(self, ann: ModelAnnouncement) -> None:
        manifest, scorer, active = self.current()
        if ann.version == active:
            self.report(ann, "active", "already running this version")
            return
        candidate = self.fetch(ann, manifest, scorer)
        self.swap(candidate)
        self.store.activate(ann.version, previous=active)
        self.report(ann, "active")

    def start_shadow(self, ann: ModelAnnouncement) -> None:
        manifest, scorer, active = self.current()
        if ann.version == active:
            raise UpdateError(f"{ann.version} is the active model; there is nothing to shadow")
        self.shadow(self.fetch(ann, manifest, scorer))
        self.report(ann, "shadow", f"scoring beside {active}, never alerting")

    def fetch(self, ann: ModelAnnouncement, manifest: Manifest, scorer: Scorer) -> Candidate:
        """Download, verify, load and self-test the announced bundle."""
        self.report(ann, "downloading")
        tar = download(ann.url, self.token, min(ann.size, MAX_BUNDLE_BYTES))
        digest = hashlib.sha256(tar).hexdigest()
        if digest != ann.sha256:
            raise UpdateError(f"SHA-256 of the download is {digest[:12]}..., the announcement "
                              f"says {ann.sha256[:12]}...")
        candidate, note = self.prepare(ann.version, tar, manifest, scorer, ann.signature)
        self.report(ann, "verified", note)
        return candidate

    def prepare(self, version: str, tar: bytes, manifest: Manifest, scorer: Scorer,
                signature: str | None = None) -> tuple[Candidate, str]:
        try:
            path = self.store.install(version, tar)
            new_manifest = verify_bundle(path, self.trusted_keys)
        except ContractError as exc:
            raise UpdateError(f"bundle refused: {exc}") from None
        if signature and (path / SIGNATURE).read_text().strip() != signature.strip():
            raise UpdateError("the announcement's signature is not the bundle's manifest.sig")
        if new_manifest.version != version:
            raise UpdateError(f"bundle holds version {new_manifest.version}, "
                              f"announced as {version}")
        if (new_manifest.features, new_manifest.window) != (manifest.features, manifest.window):
            raise UpdateError("bundle needs other features or another window than this "
                              "gateway serves; it cannot be swapped in between two ticks")
        try:
            new_scorer = Scorer(path / new_manifest.edge.file, new_manifest)
        except (ModelLoadError, OSError) as exc:
            raise UpdateError(f"cannot load the edge model: {exc}") from None
        note = self_test(new_scorer, scorer, self.held_windows(), new_manifest)
        return Candidate(version, new_manifest, new_scorer, path), note

    def rollback(self, ann: ModelAnnouncement) -> None:
        manifest, scorer, active = self.current()
        target = ann.version
        path = self.store.path_of(target)
        if not path.is_dir():
            raise UpdateError(f"no installed bundle {target} to roll back to")
        try:
            old_manifest = verify_bundle(path, self.trusted_keys)
            old_scorer = Scorer(path / old_manifest.edge.file, old_manifest)
        except (ContractError, ModelLoadError) as exc:
            raise UpdateError(f"cannot roll back to {target}: {exc}") from None
        self.swap(Candidate(old_manifest.version, old_manifest, old_scorer, path))
        self.store.activate(target, previous=active)
        self.report(ann, "rolled-back")
