"""The function's model: a verified bundle's float TFLite network behind one batched call.

Loaded once per execution environment (module global): a warm invoke reuses the interpreter.
`PDM_MODEL_RUNTIME=tensorflow` loads the Keras model instead; it exists only so the benchmark
can measure what TensorFlow costs a function, and is never what the packaged image runs.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from cloud_service.serverless import ServerlessError
from contract.bundle import verify_bundle
from contract.errors import ContractError
from contract.manifest import FLOAT_TFLITE, Manifest
from contract.preprocess import rul_from_output

BUNDLE_ENV = "PDM_BUNDLE"
KEY_ENV = "PDM_BUNDLE_KEY"
RUNTIME_ENV = "PDM_MODEL_RUNTIME"
# Where the Lambda image bakes the bundle in (deploy/aws/Dockerfile.lambda).
DEFAULT_BUNDLE = "/opt/bundle"
DEFAULT_KEY = "/opt/bundle_signing_key.pub"


class BatchModel(Protocol):
    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class LiteRtModel:
    """`model(x)` -> (probability, rul) for a batch x (n, W, F), normalised. The input is
    resized only when the batch size changes (a resize reallocates the tensors)."""

    def __init__(self, bundle: Path, manifest: Manifest, num_threads: int = 1) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise ServerlessError(f"ai-edge-litert is not installed: {exc}") from None
        self.manifest = manifest
        self.shape = (manifest.window, len(manifest.features))
        self._lock = threading.Lock()
        try:
            self._interp = Interpreter(model_path=str(bundle / FLOAT_TFLITE),
                                       num_threads=num_threads)
        except Exception as exc:  # LiteRT raises ValueError/RuntimeError for a bad file
            raise ServerlessError(f"cannot load {FLOAT_TFLITE}: {exc}") from None
        self._in = self._interp.get_input_details()[0]["index"]
        self._out = self._interp.get_output_details()[0]["index"]
        self._batch = 0
        self._resize(1)

    def _resize(self, n: int) -> None:
        self._interp.resize_tensor_input(self._in, [n, *self.shape])
        self._interp.allocate_tensors()
        self._batch = n

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(x, np.float32)
        if x.ndim != 3 or x.shape[1:] != self.shape:
            raise ValueError(f"windows of shape {x.shape[1:]}, the model needs {self.shape}")
        with self._lock:
            if len(x) != self._batch:
                self._resize(len(x))
            self._interp.set_tensor(self._in, x)
            self._interp.invoke()
            out = np.array(self._interp.get_tensor(self._out))
        return out[:, 0].astype(np.float32), rul_from_output(out[:, 1], self.manifest)


@dataclass(frozen=True)
class Loaded:
    manifest: Manifest
    model: BatchModel
    runtime: str


_loaded: Loaded | None = None
_load_lock = threading.Lock()


def load(bundle: Path, key: Path, runtime: str = "litert") -> Loaded:
    """Verify the bundle (trusted signature, file hashes), then load its model."""
    try:
        manifest = verify_bundle(bundle, [key])
    except ContractError as exc:
        raise ServerlessError(f"bundle {bundle} refused: {exc}") from None
    if runtime == "tensorflow":
        from cloud_service.model import KerasModel
        return Loaded(manifest, KerasModel(bundle, manifest), runtime)
    if runtime != "litert":
        raise ServerlessError(f"{RUNTIME_ENV}={runtime!r}: use litert (or tensorflow)")
    return Loaded(manifest, LiteRtModel(bundle, manifest), runtime)


def get_model() -> Loaded:
    """The environment's model, loaded on first use (cold start) from PDM_BUNDLE."""
    global _loaded
    with _load_lock:
        if _loaded is None:
            _loaded = load(Path(os.environ.get(BUNDLE_ENV, DEFAULT_BUNDLE)),
                           Path(os.environ.get(KEY_ENV, DEFAULT_KEY)),
                           os.environ.get(RUNTIME_ENV, "litert"))
        return _loaded
