"""Signed model announcements, TUF/Uptane in miniature.

The bundle's own signature says *what* a model is; the announcement's says *who* asked a gateway
to run it, *which* gateway, *when*, and until when. The cloud signs the canonical JSON of every
field but the signature (`announcement_bytes`, the one definition both sides use); a gateway
checks the signer against its trusted keys minus the revoked ones, the gateway id, the expiry
and the issue time. Replay (an older, validly signed announcement published again) needs the
gateway's memory of the newest one it accepted, so that check lives with the gateway's state.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from contract.bundle import PublicKeyLike, key_fingerprint, load_private_key, load_public_key
from contract.errors import ContractError
from contract.payloads import ModelAnnouncement

FINGERPRINT = re.compile(r"[0-9a-f]{16}")


class AnnouncementRefused(ContractError):
    """An announcement a gateway must not act on; `kind` is a short reason for metrics."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def canonical_json(fields: Mapping[str, object]) -> bytes:
    """Sorted keys, no spaces, ASCII only, no NaN: the same bytes on every side."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def announcement_bytes(ann: ModelAnnouncement) -> bytes:
    """What the signature covers: every field of the announcement except the signature."""
    return canonical_json(ann.model_dump(mode="json", exclude={"signature"}))


def sign_announcement(private_key: Ed25519PrivateKey | str | Path,
                      **fields: object) -> ModelAnnouncement:
    """A ModelAnnouncement of `fields` (no key_id or signature), signed with `private_key`."""
    if not isinstance(private_key, Ed25519PrivateKey):
        private_key = load_private_key(private_key)
    draft = ModelAnnouncement(**fields, key_id=key_fingerprint(private_key.public_key()),
                              signature="unsigned")
    signature = private_key.sign(announcement_bytes(draft))
    return draft.model_copy(update={"signature": base64.b64encode(signature).decode()})


class KeyRing:
    """Trusted public keys by fingerprint, minus the revoked ones.

    Revocation wins: a key listed as trusted and as revoked is refused, so rotating means adding
    the new key to the trusted list, signing with it, then revoking the old one."""

    def __init__(self, trusted: Iterable[PublicKeyLike],
                 revoked: Iterable[str | Path] = ()) -> None:
        self.revoked = {revoked_fingerprint(item) for item in revoked}
        self.keys: dict[str, Ed25519PublicKey] = {}
        for item in trusted:
            key = load_public_key(item)
            self.keys[key_fingerprint(key)] = key

    def usable(self) -> list[Ed25519PublicKey]:
        """The trusted keys that are not revoked (what bundle signatures are checked with)."""
        return [key for fp, key in self.keys.items() if fp not in self.revoked]

    def key(self, key_id: str) -> Ed25519PublicKey:
        if key_id in self.revoked:
            raise AnnouncementRefused("revoked-key", f"signed by key {key_id}, which is revoked")
        if key_id not in self.keys:
            raise AnnouncementRefused("unknown-key",
                                      f"signed by key {key_id}, which is not trusted here")
        return self.keys[key_id]


def revoked_fingerprint(item: str | Path) -> str:
    """A revoked-key entry is a 16-hex-digit fingerprint or the path of the PEM public key."""
    text = str(item).strip()
    if FINGERPRINT.fullmatch(text):
        return text
    return key_fingerprint(Path(text))


def verify_announcement(ann: ModelAnnouncement, keys: KeyRing, gateway: str, now: float,
                        max_clock_skew: float = 300.0) -> None:
    """Refuse (AnnouncementRefused) an announcement for another gateway, by an untrusted or
    revoked key, with a signature that does not verify, expired, or issued in the future."""
    if ann.gateway != gateway:
        raise AnnouncementRefused("wrong-gateway", f"announcement is for gateway {ann.gateway}, "
                                                   f"this is {gateway}")
    key = keys.key(ann.key_id)
    try:
        signature = base64.b64decode(ann.signature, validate=True)
        key.verify(signature, announcement_bytes(ann))
    except (ValueError, InvalidSignature):
        raise AnnouncementRefused("bad-signature", f"announcement signature does not verify "
                                                   f"with key {ann.key_id}") from None
    if now >= ann.expires_at:
        raise AnnouncementRefused("expired", f"announcement expired {now - ann.expires_at:.0f} s "
                                             "ago; ask the cloud to announce again")
    if ann.issued_at > now + max_clock_skew:
        raise AnnouncementRefused(
            "not-yet-valid", f"announcement issued {ann.issued_at - now:.0f} s in the future "
                             f"(more than the {max_clock_skew:.0f} s clock skew allowed)")
