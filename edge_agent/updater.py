"""Over-the-air model updates.

The cloud announces a bundle (retained `ModelAnnouncement` on `pdm/v1/{gateway}/model`), signed
with a key the gateway trusts. Before anything touches the network or the disk the agent checks
that signature (by a trusted, unrevoked key, for this gateway, not expired), that the
announcement is newer than the last one it accepted (replay), and that an install or shadow
names a version above the highest it ever ran (downgrade); a rollback needs a signed rollback
announcement naming an installed version. The download goes only to the configured model
server's origin (the bearer token never to another host or scheme; `file://` only when
configured). The agent downloads it (bounded, retried), checks the tar's SHA-256 and the
bundle's Ed25519 signature against its trusted keys, refuses a manifest it cannot serve (other
features or window), loads the edge model, self-tests it on the windows it holds, and only then
asks the main loop to swap it in between two ticks (or, for a "shadow" announcement, runs it
beside the active model without alerting from it, until the next announcement). Each step is
reported on `pdm/v1/{gateway}/update`. Bundles are kept under `state_dir/bundles/<version>`;
`state_dir/active.json` remembers the active and previous versions, the highest version ever
active and the newest announcement accepted, so a restart keeps the update, a rollback has
something to go back to, and neither a downgrade nor a replay gets through after a restart. A
bundle that fails any check is removed. Every refusal is reported with its reason and counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import shutil
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract import codec, topics
from contract.bundle import MAX_BUNDLE_BYTES, read_manifest, unpack_bundle, verify_bundle
from contract.errors import ContractError
from contract.manifest import Manifest
from contract.ota import AnnouncementRefused, KeyRing, verify_announcement
from contract.payloads import ModelAnnouncement, UpdateReport
from contract.versions import highest, is_newer, is_safe_name
from edge_agent.scorer import ModelLoadError, Scorer

log = logging.getLogger(__name__)


class UpdateError(RuntimeError):
    """An update step failed; the message is the reason reported to the cloud, `kind` the
    short reason it is counted under."""

    def __init__(self, message: str, kind: str = "failed") -> None:
        super().__init__(message)
        self.kind = kind


class BundleStore:
    """Installed bundles, which one is active, and the OTA memory (survives restarts)."""

    def __init__(self, state_dir: Path, shipped: Path) -> None:
        self.root = state_dir / "bundles"
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_file = state_dir / "active.json"
        self.shipped = shipped
        self.shipped_version = read_manifest(shipped).version

    def _state(self) -> dict:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _write(self, **changes: object) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self._state(), **changes}))
        tmp.replace(self.state_file)  # atomic: a crash leaves the old or the new state

    def folder(self, version: str) -> Path:
        """The folder of an installed version; never anything but a child of `root`."""
        if not is_safe_name(version):  # announced versions match the stricter pattern too
            raise UpdateError(f"version {version!r} cannot name a folder", "bad-version")
        return self.root / version

    def path_of(self, version: str | None) -> Path:
        if version in (None, self.shipped_version):
            return self.shipped
        return self.folder(version)

    def active(self) -> Path:
        return self.path_of(self._state().get("active"))

    def previous(self) -> str | None:
        return self._state().get("previous")

    def highest(self) -> str | None:
        """The highest version this gateway ever ran (installs must go above it)."""
        state = self._state()
        return highest([v for v in (state.get("highest"), state.get("active"),
                                    self.shipped_version) if isinstance(v, str)])

    def last_accepted(self) -> tuple[float, str | None]:
        """Issue time and signature of the newest announcement handled (replay guard)."""
        state = self._state()
        issued = state.get("accepted_issued_at")
        return (float(issued) if isinstance(issued, (int, float)) else 0.0,
                state.get("accepted_signature"))

    def accept(self, ann: ModelAnnouncement) -> None:
        self._write(accepted_issued_at=ann.issued_at, accepted_signature=ann.signature)

    def install(self, version: str, tar: bytes) -> Path:
        final = self.folder(version)
        tmp = self.root / f".{version}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            unpack_bundle(tar, tmp)
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final

    def discard(self, version: str) -> None:
        """Remove a bundle that failed its checks (never the active, previous or shipped)."""
        state = self._state()
        if version in (state.get("active"), state.get("previous"), self.shipped_version):
            return
        shutil.rmtree(self.folder(version), ignore_errors=True)

    def activate(self, version: str, previous: str) -> None:
        top = highest([v for v in (self.highest(), version) if v])
        self._write(active=version, previous=previous, highest=top)


@dataclass
class Candidate:
    """A verified, loaded, self-tested bundle waiting to be swapped in."""

    version: str
    manifest: Manifest
    scorer: Scorer
    path: Path


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect could carry the download to another origin: the model server must serve the
    bundle at the announced URL itself."""

    def redirect_request(self, req: urllib.request.Request, fp: object, code: int, msg: str,
                         headers: object, newurl: str) -> urllib.request.Request | None:
        raise UpdateError(f"the model server answered {code} redirecting to {newurl}; "
                          "redirects are not followed", "url")


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, for comparing where a request would go."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    return scheme, (parts.hostname or "").lower(), port


@dataclass(frozen=True)
class DownloadPolicy:
    """Where bundles may come from, and where the bearer token may go."""

    model_server: str | None = None  # an origin, e.g. https://cloud.example:8443
    token: str | None = field(default=None, repr=False)
    allow_file_urls: bool = False

    def token_for(self, url: str) -> str | None:
        """The token to send with `url` (None: send none); UpdateError if `url` is refused."""
        if any(c.isspace() or ord(c) < 32 or c == "\\" for c in url):
            raise UpdateError("bundle URL holds whitespace, control characters or backslashes",
                              "url")
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "file":
            if not self.allow_file_urls:
                raise UpdateError("file:// bundle URLs are refused (bundle.allow_file_urls is "
                                  "off)", "url")
            return None
        if scheme not in ("http", "https"):
            raise UpdateError(f"bundle URL scheme {scheme!r} is refused (http or https only)",
                              "url")
        try:
            where = origin(url)
        except ValueError as exc:
            raise UpdateError(f"bundle URL is malformed ({exc})", "url") from None
        if "@" in parts.netloc or not where[1]:
            raise UpdateError("bundle URL must name a host and no user or password", "url")
        if self.model_server is None:
            return None  # no model server configured: no token to protect, none sent
        if where != origin(self.model_server):
            raise UpdateError(f"bundle URL {parts.scheme}://{parts.netloc} is not the "
                              f"configured model server {self.model_server}", "url")
        return self.token


def download(url: str, token: str | None, max_bytes: int, attempts: int = 3,
             timeout: float = 30) -> bytes:
    opener = urllib.request.build_opener(_RefuseRedirects)
    error: Exception | None = None
    for attempt in range(attempts):
        try:
            req = urllib.request.Request(url)
            if token:  # unredirected: never carried along should a redirect slip through
                req.add_unredirected_header("Authorization", f"Bearer {token}")
            with opener.open(req, timeout=timeout) as resp:
                data = resp.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise UpdateError(f"bundle is larger than the {max_bytes} byte limit")
            return data
        except UpdateError:
            raise
        except Exception as exc:  # network errors of every kind: retry, then give up
            error = exc
            time.sleep(min(2**attempt, 10))
    raise UpdateError(f"download of {url} failed after {attempts} attempts: {error}",
                      "download")


def self_test(new: Scorer, old: Scorer, windows: list[np.ndarray], manifest: Manifest) -> str:
    """Finite outputs of the right shape, and decisions that agree with the running model on
    the held windows as often as the new manifest's tolerance asks. Returns a summary."""
    probe = windows or [new.normaliser.neutral_rows(manifest.window)]
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


@dataclass(frozen=True)
class OtaPolicy:
    """Who may sign bundles and announcements, and where downloads may go."""

    bundle_keys: KeyRing
    announcement_keys: KeyRing
    downloads: DownloadPolicy = DownloadPolicy()
    max_clock_skew: float = 300.0


class Updater(threading.Thread):
    """Works announcements off one at a time, away from the network and scoring threads."""

    def __init__(self, gateway: str, store: BundleStore, policy: OtaPolicy,
                 current: Callable[[], tuple[Manifest, Scorer, str]],
                 held_windows: Callable[[], list[np.ndarray]],
                 swap: Callable[[Candidate], None], publish: Callable[[str, bytes], None],
                 stop: threading.Event,
                 shadow: Callable[[Candidate | None], None] = lambda c: None,
                 refused: Callable[[str], None] = lambda kind: None) -> None:
        super().__init__(name="updater", daemon=True)
        self.gateway, self.store, self.policy = gateway, store, policy
        self.current, self.held_windows, self.swap = current, held_windows, swap
        self.shadow, self.refused = shadow, refused
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
            self.refuse_malformed(payload, exc)
            return
        # Retained messages come again, byte for byte, at every reconnect.
        digest = hashlib.sha256(payload).hexdigest()
        if digest != self.last_seen:
            self.last_seen = digest
            self.inbox.put(ann)

    def refuse_malformed(self, payload: bytes, exc: ContractError) -> None:
        """Count and report an announcement that does not even parse (e.g. version `..`)."""
        self.failures += 1
        self.refused("malformed")
        try:
            raw = json.loads(payload)
            version = raw.get("version") if isinstance(raw, dict) else None
        except ValueError:
            version = None
        version = version[:64] if isinstance(version, str) else ""
        log.warning("refused a malformed model announcement: %s", exc)
        self.publish(topics.update(self.gateway), codec.encode_json(UpdateReport(
            gateway=self.gateway, version=version, step="failed",
            reason=f"refused a malformed announcement: {str(exc)[:900]}", time=time.time())))

    def report(self, ann: ModelAnnouncement, step: str, reason: str | None = None,
               authentic: bool = True) -> None:
        # an announcement that failed its signature check names no rollout we can trust
        self.publish(topics.update(self.gateway), codec.encode_json(UpdateReport(
            gateway=self.gateway, version=ann.version, step=step, reason=reason,
            rollout_id=ann.rollout_id if authentic else None, time=time.time())))
        (log.warning if step == "failed" else log.info)(
            "model %s: %s%s", ann.version, step, f" ({reason})" if reason else "")

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                ann = self.inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            authentic, settled = False, True
            try:
                authentic = self.authenticate(ann)
                if authentic:
                    self.handle(ann)
            except Exception as exc:  # never let one bad bundle stop the updater
                self.failures += 1
                if ann is None:
                    log.exception("stopping the shadow model failed")
                    continue
                kind = getattr(exc, "kind", "failed")
                settled = kind != "download"  # the network may be back after a restart
                reason = str(exc)
                if not isinstance(exc, (UpdateError, AnnouncementRefused)):
                    log.exception("update to %s failed", ann.version)
                    reason = f"unexpected error: {exc}"
                self.refused(kind)
                self.report(ann, "failed", reason, authentic)
            finally:
                if authentic and settled and ann is not None:
                    self.store.accept(ann)  # the replay guard moves on once the outcome is final

    def authenticate(self, ann: ModelAnnouncement | None) -> bool:
        """True: a signed, fresh announcement to act on (None, a withdrawal, passes too).
        False: the one already handled, again. Raises for anything else."""
        if ann is None:
            return True
        verify_announcement(ann, self.policy.announcement_keys, self.gateway, time.time(),
                            self.policy.max_clock_skew)
        issued_at, signature = self.store.last_accepted()
        if ann.signature == signature:
            log.debug("announcement of %s already handled", ann.version)
            return False
        if ann.issued_at <= issued_at:
            raise AnnouncementRefused(
                "replayed", f"announcement issued at {ann.issued_at:.3f} is not newer than the "
                            f"last one accepted ({issued_at:.3f}): a replay or a stale copy")
        return True

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

    def check_upgrade(self, ann: ModelAnnouncement) -> None:
        top = self.store.highest()
        if top is not None and not is_newer(ann.version, top):
            raise UpdateError(f"{ann.version} is not newer than {top}, the highest version this "
                              "gateway has run; going back needs a signed rollback "
                              "announcement", "downgrade")

    def update(self, ann: ModelAnnouncement) -> None:
        manifest, scorer, active = self.current()
        if ann.version == active:
            self.report(ann, "active", "already running this version")
            return
        self.check_upgrade(ann)
        candidate = self.fetch(ann, manifest, scorer)
        self.swap(candidate)
        self.store.activate(ann.version, previous=active)
        self.report(ann, "active")

    def start_shadow(self, ann: ModelAnnouncement) -> None:
        manifest, scorer, active = self.current()
        if ann.version == active:
            raise UpdateError(f"{ann.version} is the active model; there is nothing to shadow")
        self.check_upgrade(ann)
        self.shadow(self.fetch(ann, manifest, scorer))
        self.report(ann, "shadow", f"scoring beside {active}, never alerting")

    def fetch(self, ann: ModelAnnouncement, manifest: Manifest, scorer: Scorer) -> Candidate:
        """Download, verify, load and self-test the announced bundle."""
        token = self.policy.downloads.token_for(ann.url)
        self.report(ann, "downloading")
        tar = download(ann.url, token, min(ann.size, MAX_BUNDLE_BYTES))
        digest = hashlib.sha256(tar).hexdigest()
        if digest != ann.sha256:
            raise UpdateError(f"SHA-256 of the download is {digest[:12]}..., the announcement "
                              f"says {ann.sha256[:12]}...", "hash")
        try:
            candidate, note = self.prepare(ann.version, tar, manifest, scorer)
        except Exception:
            self.store.discard(ann.version)  # nothing unverified stays on disk
            raise
        self.report(ann, "verified", note)
        return candidate

    def prepare(self, version: str, tar: bytes, manifest: Manifest,
                scorer: Scorer) -> tuple[Candidate, str]:
        try:
            path = self.store.install(version, tar)
            new_manifest = verify_bundle(path, self.policy.bundle_keys.usable())
        except ContractError as exc:
            raise UpdateError(f"bundle refused: {exc}", "bundle") from None
        if new_manifest.version != version:
            raise UpdateError(f"bundle holds version {new_manifest.version}, "
                              f"announced as {version}", "bundle")
        if (new_manifest.columns, new_manifest.window) != (manifest.columns, manifest.window):
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
            old_manifest = verify_bundle(path, self.policy.bundle_keys.usable())
            old_scorer = Scorer(path / old_manifest.edge.file, old_manifest)
        except (ContractError, ModelLoadError) as exc:
            raise UpdateError(f"cannot roll back to {target}: {exc}", "bundle") from None
        self.swap(Candidate(old_manifest.version, old_manifest, old_scorer, path))
        self.store.activate(target, previous=active)
        self.report(ann, "rolled-back")
