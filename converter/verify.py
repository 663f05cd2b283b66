"""Re-check a bundle: signature and hashes, then both models on the test protocol and the gate."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.bundle import read_manifest, sha256_file, verify_bundle
from contract.errors import ContractError
from contract.manifest import KERAS_MODEL, Manifest
from contract.preprocess import Normaliser
from converter.data import DataError, TestSet, cmapss_test_set, csv_test_set
from converter.evaluate import GateResult, LiteModel, head_metrics, parity, parity_gate

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO / "data" / "cmapss"


def default_data_dir() -> Path:
    """PDM_DATA_DIR, else the repository's data/cmapss (test files of FD001 only)."""
    return Path(os.environ.get("PDM_DATA_DIR", DEFAULT_DATA))


def trusted_keys_near(bundle: Path) -> list[Path]:
    """Public keys stored beside the bundle folder (models/*.pub for models/default)."""
    return sorted(Path(bundle).resolve().parent.glob("*.pub"))


@dataclass
class Verification:
    manifest: Manifest
    signed_by_trusted_key: bool
    test: TestSet
    keras_metrics: dict[str, float]
    edge_metrics: dict[str, float]
    agreement: dict[str, float]
    gate: GateResult
    keras_scored: np.ndarray
    edge_scored: np.ndarray
    keras_every: np.ndarray
    edge_every: np.ndarray


def test_set_for(manifest: Manifest, data: Path | None, csv: Path | None = None,
                 asset_col: str = "asset", time_col: str = "time") -> TestSet:
    """The manifest's own test protocol: C-MAPSS subset from its dataset name, or a CSV."""
    if csv is not None:
        return csv_test_set(csv, asset_col, time_col, Normaliser.of(manifest), manifest.window)
    dataset = manifest.source.dataset
    if not dataset.startswith("C-MAPSS "):
        raise DataError(f"bundle was trained on {dataset}; pass --csv with held-out assets")
    subset = dataset.split()[1]
    return cmapss_test_set(data or default_data_dir(), subset, Normaliser.of(manifest),
                           manifest.window)


def verify(bundle: Path, trusted_keys: list[Path], data: Path | None = None,
           csv: Path | None = None, asset_col: str = "asset",
           time_col: str = "time") -> Verification:
    """Raises ContractError when the signature or a hash is wrong; otherwise measures."""
    bundle = Path(bundle)
    if trusted_keys:
        manifest = verify_bundle(bundle, trusted_keys)
        signed = True
    else:  # no key to check against: still refuse a file changed after the manifest was written
        manifest = read_manifest(bundle)
        for name, expected in manifest.files.items():
            if not (bundle / name).is_file() or sha256_file(bundle / name) != expected:
                raise ContractError(f"{name} is missing or differs from its manifest hash")
        signed = False
    test = test_set_for(manifest, data, csv, asset_col, time_col)

    import keras

    from converter.model import predict

    float_model = keras.saving.load_model(bundle / KERAS_MODEL, compile=False)
    keras_scored, keras_every = predict(float_model, test.scored.x), predict(float_model,
                                                                              test.every.x)
    edge = LiteModel(bundle / manifest.edge.file)
    edge_scored, edge_every = edge.predict(test.scored.x), edge.predict(test.every.x)
    threshold = manifest.thresholds.decision
    keras_metrics = head_metrics(keras_scored, test.scored, manifest.horizon, manifest.rul_cap,
                                 threshold)
    edge_metrics = head_metrics(edge_scored, test.scored, manifest.horizon, manifest.rul_cap,
                                threshold)
    agreement = parity(keras_every, edge_every, manifest.rul_cap, threshold)
    gate = parity_gate(keras_metrics, edge_metrics, agreement, manifest.tolerances)
    return Verification(manifest, signed, test, keras_metrics, edge_metrics, agreement, gate,
                        keras_scored, edge_scored, keras_every, edge_every)
