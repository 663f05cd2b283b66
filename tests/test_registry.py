"""The model registry folder shared by several cloud replicas."""

from __future__ import annotations

import threading
from pathlib import Path

from cloud_service.registry import Registry
from cloud_service.store.sqlite import SqliteStore
from contract.bundle import pack_bundle, read_manifest
from tests.conftest import DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY


def test_replicas_starting_together_each_keep_the_default_bundle_tar(tmp_path: Path) -> None:
    """Every replica registers the bundle it scores with at start, into one shared folder (a
    volume in compose and Kubernetes); none may fail because another is writing the same tar."""
    manifest = read_manifest(DEFAULT_BUNDLE)
    expected = pack_bundle(DEFAULT_BUNDLE)
    replicas, rounds = 4, 10
    for round_ in range(rounds):
        shared = tmp_path / f"round-{round_}" / "bundles"
        registries = [Registry(shared, SqliteStore(tmp_path / f"round-{round_}" / f"{i}.db"),
                               [DEFAULT_BUNDLE_KEY], max_bytes=50_000_000)
                      for i in range(replicas)]
        start = threading.Barrier(replicas)
        errors: list[BaseException] = []

        def register(registry: Registry, start: threading.Barrier,
                     errors: list[BaseException]) -> None:
            start.wait()
            try:
                registry.register_folder(DEFAULT_BUNDLE, manifest)
            except BaseException as exc:  # noqa: BLE001 (reported by the assert below)
                errors.append(exc)

        threads = [threading.Thread(target=register, args=(r, start, errors)) for r in registries]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        tar = shared / f"{manifest.version}.tar"
        assert tar.read_bytes() == expected
        assert sorted(p.name for p in shared.iterdir()) == [tar.name]  # no temporary left
        assert all(r.tar_path(manifest.version) == tar for r in registries)
