"""Variants of a real bundle for update tests: re-versioned, tampered, re-signed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from contract.bundle import pack_bundle, sha256_file, sign_bundle
from contract.manifest import MANIFEST


def variant(src: Path, dest: Path, version: str, key: Path,
            change: Callable[[Path, dict], None] | None = None, rehash: bool = True) -> Path:
    """Copy `src`, give it `version`, let `change(folder, manifest_dict)` alter it, then
    (unless rehash is False) recompute the hashes and sign with `key`."""
    shutil.copytree(src, dest)
    doc = json.loads((dest / MANIFEST).read_text())
    doc["version"] = version
    if change:
        change(dest, doc)
    if rehash:
        doc["files"] = {name: sha256_file(dest / name) for name in doc["files"]}
        (dest / MANIFEST).write_text(json.dumps(doc, indent=2, sort_keys=True))
        sign_bundle(dest, key)
    return dest


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def tar(folder: Path) -> bytes:
    return pack_bundle(folder)
