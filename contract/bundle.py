"""Signing and verification of model bundles (Ed25519 over manifest.json, SHA-256 per file)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from contract.errors import ContractError
from contract.manifest import MANIFEST, SIGNATURE, Manifest
from contract.payloads import to_contract_error

PublicKeyLike = Ed25519PublicKey | bytes | str | os.PathLike
MAX_BUNDLE_BYTES = 64 * 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def generate_keypair(private_path: Path, public_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    private_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    os.chmod(private_path, 0o600)
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def load_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ContractError(f"cannot read signing key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ContractError(f"signing key {path} is not an Ed25519 key")
    return key


def load_public_key(key: PublicKeyLike) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    where = "public key"
    # A path-like is always a file; a str is a file unless it is the PEM text itself.
    if isinstance(key, os.PathLike) or (isinstance(key, str)
                                        and not key.lstrip().startswith("-----")):
        where = f"public key {key}"
        try:
            key = Path(key).read_bytes()
        except OSError as exc:
            raise ContractError(f"cannot read {where}: {exc}") from None
    data = key.encode() if isinstance(key, str) else key
    try:
        loaded = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ContractError(f"{where} is not a PEM public key ({exc})") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise ContractError(f"{where} is not an Ed25519 key")
    return loaded


def key_fingerprint(key: PublicKeyLike) -> str:
    raw = load_public_key(key).public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_bundle(bundle: Path, private_key: Ed25519PrivateKey | str | os.PathLike) -> None:
    """Write manifest.sig: the base64 Ed25519 signature of manifest.json's exact bytes."""
    if not isinstance(private_key, Ed25519PrivateKey):
        private_key = load_private_key(private_key)
    signature = private_key.sign((Path(bundle) / MANIFEST).read_bytes())
    (Path(bundle) / SIGNATURE).write_text(base64.b64encode(signature).decode() + "\n")


def verify_signature(manifest_bytes: bytes, signature_text: str,
                     trusted_public_keys: Iterable[PublicKeyLike]) -> None:
    keys = [load_public_key(k) for k in trusted_public_keys]
    if not keys:
        raise ContractError("no trusted public keys are configured, so no bundle can be accepted")
    try:
        signature = base64.b64decode(signature_text.strip(), validate=True)
    except ValueError:
        raise ContractError(f"{SIGNATURE} is not base64") from None
    for key in keys:
        try:
            key.verify(signature, manifest_bytes)
            return
        except InvalidSignature:
            continue
    raise ContractError(f"{SIGNATURE} does not verify with any trusted key "
                        "(tampered manifest or untrusted signer)")


def verify_bundle(path: str | os.PathLike,
                  trusted_public_keys: Iterable[PublicKeyLike]) -> Manifest:
    """Check a bundle folder: signature by a trusted key, then every file's SHA-256, and no
    unlisted files. Returns the manifest; raises ContractError with the reason otherwise."""
    root = Path(path)
    if not root.is_dir():
        raise ContractError(f"bundle {root} is not a folder")
    for name in (MANIFEST, SIGNATURE):
        if not (root / name).is_file():
            raise ContractError(f"bundle {root} has no {name}")
    manifest_bytes = (root / MANIFEST).read_bytes()
    verify_signature(manifest_bytes, (root / SIGNATURE).read_text(), trusted_public_keys)
    manifest = parse_manifest(manifest_bytes, root)
    for name, expected in manifest.files.items():
        if Path(name).name != name:
            raise ContractError(f"manifest lists {name!r}, which is not a plain file name")
        file = root / name
        if not file.is_file():
            raise ContractError(f"bundle {root} lacks {name}, which the manifest lists")
        actual = sha256_file(file)
        if actual != expected:
            raise ContractError(f"{name} has SHA-256 {actual[:12]}..., the manifest says "
                                f"{expected[:12]}... (file changed after signing)")
    extra = sorted(p.name for p in root.iterdir()
                   if p.name not in manifest.files and p.name not in (MANIFEST, SIGNATURE))
    if extra:
        raise ContractError(f"bundle {root} holds file(s) the manifest does not list: "
                            f"{', '.join(extra)}")
    return manifest


def parse_manifest(data: bytes, where: object = "bundle") -> Manifest:
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise to_contract_error(exc, f"manifest of {where}") from None


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest without verifying anything (for tools; gateways use verify_bundle)."""
    return parse_manifest((Path(path) / MANIFEST).read_bytes(), path)


def pack_bundle(bundle: Path) -> bytes:
    """A bundle folder as an uncompressed tar of its top-level files, in a stable order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for file in sorted(Path(bundle).iterdir()):
            if file.is_file():
                info = tar.gettarinfo(str(file), arcname=file.name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                with open(file, "rb") as fh:
                    tar.addfile(info, fh)
    return out.getvalue()


def unpack_bundle(data: bytes, dest: Path, max_bytes: int = MAX_BUNDLE_BYTES) -> Path:
    """Extract a bundle tar into `dest` (plain files at the top level only)."""
    if len(data) > max_bytes:
        raise ContractError(f"bundle of {len(data)} bytes exceeds the {max_bytes} limit")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            members = tar.getmembers()
            total = 0
            for m in members:
                if not m.isfile() or Path(m.name).name != m.name or m.name in ("", ".", ".."):
                    raise ContractError(f"bundle tar entry {m.name!r} is not a plain "
                                        "top-level file")
                total += m.size
                if total > max_bytes:
                    raise ContractError(f"bundle unpacks beyond the {max_bytes} byte limit")
            for m in members:
                src = tar.extractfile(m)
                assert src is not None
                (dest / m.name).write_bytes(src.read())
    except tarfile.TarError as exc:
        raise ContractError(f"bundle is not a valid tar archive ({exc})") from None
    return dest
