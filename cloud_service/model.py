"""The cloud's model: a verified bundle's float Keras network behind one batched call.

TensorFlow is imported here and only here (lazily), never in contract/ or edge_agent/.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from contract.bundle import PublicKeyLike, verify_bundle
from contract.errors import ContractError
from contract.manifest import KERAS_MODEL, Manifest
from contract.preprocess import rul_from_output

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """The bundle cannot be used by the cloud; the message says why."""


class KerasModel:
    """`model(x)` -> (probability, rul) for a batch x of shape (n, W, F), normalised.

    One traced `tf.function` with an unknown batch dimension serves every batch size without
    retracing; Keras `predict` (per-call setup of ~90 ms) is never used.
    """

    def __init__(self, bundle: Path, manifest: Manifest) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf

        if list(manifest.outputs) != ["probability", "rul_fraction"]:
            raise ModelError(f"bundle outputs {manifest.outputs} are not "
                             "[probability, rul_fraction]")
        self.manifest = manifest
        self.version = manifest.version
        self.window = manifest.window
        self.features = len(manifest.features)
        try:
            self.model = keras.models.load_model(Path(bundle) / KERAS_MODEL, compile=False)
        except Exception as exc:  # keras raises many types for a bad file
            raise ModelError(f"cannot load {KERAS_MODEL} from {bundle}: {exc}") from None
        spec = tf.TensorSpec([None, self.window, self.features], tf.float32)
        model = self.model

        @tf.function(input_signature=[spec])
        def call(x):
            return model(x, training=False)

        self._call = call
        probe = self.raw(np.zeros((1, self.window, self.features), np.float32))
        if probe.shape != (1, 2):
            raise ModelError(f"{KERAS_MODEL} returns shape {probe.shape[1:]} per window; the "
                             "cloud needs one output of 2 values [probability, rul_fraction]")

    def raw(self, x: np.ndarray) -> np.ndarray:
        out = self._call(np.ascontiguousarray(x, np.float32))
        if isinstance(out, (list, tuple)):
            if len(out) != 1:
                raise ModelError(f"{KERAS_MODEL} has {len(out)} outputs; expected one (n, 2)")
            out = out[0]
        return np.asarray(out)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.raw(x)
        return out[:, 0].astype(np.float32), rul_from_output(out[:, 1], self.manifest)


def load_verified(path: Path, trusted_keys: Iterable[PublicKeyLike]) -> tuple[Manifest, KerasModel]:
    """Verify the bundle (trusted signature, file hashes), then load its Keras model."""
    try:
        manifest = verify_bundle(path, list(trusted_keys))
    except ContractError as exc:
        raise ModelError(f"bundle {path} refused: {exc}") from None
    model = KerasModel(path, manifest)
    log.info("loaded model %s (window %d, %d features) from %s", manifest.version,
             manifest.window, len(manifest.features), path)
    return manifest, model
