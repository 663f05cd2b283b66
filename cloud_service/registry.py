"""Registered model bundles: verified on arrival, kept as a folder and as the tar that gateways
download. Announcements and rollouts build on this later."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from cloud_service.store import ModelRow, ModelStore
from contract.bundle import PublicKeyLike, pack_bundle, unpack_bundle, verify_bundle
from contract.errors import ContractError
from contract.manifest import SIGNATURE, Manifest


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file of this writer's own, then rename it over `path`. Replicas
    sharing the registry folder each write the same bundle's tar when they start; with one
    shared temporary name, one replica's rename took the file away from under another's."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:  # a full disk included: leave no partial file behind
        Path(tmp).unlink(missing_ok=True)
        raise


class Registry:
    def __init__(self, root: Path, store: ModelStore, trusted_keys: Iterable[PublicKeyLike],
                 max_bytes: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.trusted_keys = list(trusted_keys)
        self.max_bytes = max_bytes

    def register_tar(self, data: bytes, source: str = "upload") -> tuple[ModelRow, bool]:
        """Unpack, verify against the trusted keys, keep, record. Raises ContractError with the
        reason for anything unsigned, tampered or malformed; ModelConflict for a version that
        is already registered with other content."""
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".upload-") as tmp:
            folder = unpack_bundle(data, Path(tmp) / "bundle", self.max_bytes)
            manifest = verify_bundle(folder, self.trusted_keys)
            sha = hashlib.sha256(data).hexdigest()
            existing = self.store.model(manifest.version)
            if existing is not None and existing["sha256"] == sha:
                return existing, False
            final = self.root / manifest.version
            tar_path = self.root / f"{manifest.version}.tar"
            if existing is None:
                shutil.rmtree(final, ignore_errors=True)
                shutil.move(str(folder), final)
                _write_atomically(tar_path, data)
            record = self._record(manifest, final, tar_path, sha, len(data), source)
            return self.store.register_model(record)

    def register_folder(self, folder: Path, manifest: Manifest,
                        source: str = "config") -> tuple[ModelRow, bool]:
        """Record an already verified bundle folder (the one the service scores with) and keep
        its tar so gateways can download it too."""
        data = pack_bundle(folder)
        sha = hashlib.sha256(data).hexdigest()
        existing = self.store.model(manifest.version)
        if existing is not None and existing["sha256"] == sha:
            return existing, False
        tar_path = self.root / f"{manifest.version}.tar"
        if existing is None:
            _write_atomically(tar_path, data)
        record = self._record(manifest, Path(folder), tar_path, sha, len(data), source)
        return self.store.register_model(record)

    def tar_path(self, version: str) -> Path | None:
        row = self.store.model(version)
        if row is None:
            return None
        path = Path(row["tar_path"])
        return path if path.is_file() else None

    @staticmethod
    def _record(manifest: Manifest, folder: Path, tar_path: Path, sha: str, size: int,
                source: str) -> ModelRow:
        try:
            signature = (folder / SIGNATURE).read_text().strip()
        except OSError as exc:
            raise ContractError(f"cannot read {SIGNATURE} of {folder}: {exc}") from None
        return ModelRow(
            version=manifest.version, created=manifest.created, registered_at=time.time(),
            source=source, sha256=sha, size=size, signature=signature, path=str(folder),
            tar_path=str(tar_path), window=manifest.window,
            features=json.dumps(manifest.features), manifest=manifest.model_dump_json())
