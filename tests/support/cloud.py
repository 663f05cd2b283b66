"""Cloud helpers for tests and benchmarks: a small signed bundle with the real I/O contract,
and the service's app served by uvicorn in a thread.

The bundle's Keras model has the shape of the real one (input (batch, W, F), one output
(batch, 2) = [probability, rul_fraction], unrolled LSTM layers) and a readable behaviour: the
probability is sigmoid(gain * mean of the first normalised feature over the window), the RUL
fraction its mirror image, so a test can drive an asset into CRITICAL by sending high values.
Its TFLite files are placeholders: the cloud only runs model.keras.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from contract.bundle import generate_keypair, sha256_file, sign_bundle
from contract.manifest import FLOAT_TFLITE, KERAS_MODEL, MANIFEST

EDGE_FILE = "model_int8.tflite"


def build_keras_model(window: int, features: int, lstm_units: Sequence[int] = (16,),
                      gain: float = 4.0, seed: int = 7):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((window, features), dtype="float32")
    h = inp
    for i, units in enumerate(lstm_units):
        h = keras.layers.LSTM(units, unroll=True,
                              return_sequences=i < len(lstm_units) - 1)(h)
    mean = keras.layers.GlobalAveragePooling1D()(inp)
    z = keras.layers.Concatenate()([h, mean])
    head = keras.layers.Dense(2, activation="sigmoid")
    out = head(z)
    model = keras.Model(inp, out)
    kernel = np.zeros((lstm_units[-1] + features, 2), np.float32)
    # The LSTM branch contributes a little, so the network is a real LSTM, but the first
    # feature's mean decides.
    kernel[: lstm_units[-1]] = np.random.default_rng(seed).normal(
        0, 0.01, (lstm_units[-1], 2))
    kernel[lstm_units[-1], 0] = gain
    kernel[lstm_units[-1], 1] = -gain
    head.set_weights([kernel, np.zeros(2, np.float32)])
    return model


def make_bundle(folder: Path, key_dir: Path, version: str = "test-1",
                features: Sequence[str] = ("s1", "s2", "s3", "s4"), window: int = 10,
                lstm_units: Sequence[int] = (16,), rul_cap: float = 125.0,
                thresholds: dict | None = None) -> tuple[Path, Path]:
    """Write a signed bundle into `folder`; returns (folder, public key path). The key pair is
    made in `key_dir` unless it already holds one."""
    folder.mkdir(parents=True, exist_ok=True)
    key_dir.mkdir(parents=True, exist_ok=True)
    private, public = key_dir / "signing.key", key_dir / "signing.pub"
    if not private.exists():
        generate_keypair(private, public)
    model = build_keras_model(window, len(features), lstm_units)
    model.save(folder / KERAS_MODEL)
    (folder / FLOAT_TFLITE).write_bytes(b"placeholder: the cloud does not run this file\n")
    (folder / EDGE_FILE).write_bytes(b"placeholder: the cloud does not run this file\n")
    files = {name: sha256_file(folder / name) for name in (KERAS_MODEL, FLOAT_TFLITE, EDGE_FILE)}
    manifest = {
        "schema_version": 1, "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"dataset": "synthetic (test bundle)", "files": {}},
        "features": list(features), "window": window, "padding": "repeat-first",
        "normalisation": {"method": "zscore", "offset": [0.0] * len(features),
                          "scale": [1.0] * len(features)},
        "horizon": 30, "rul_cap": rul_cap, "outputs": ["probability", "rul_fraction"],
        "thresholds": {"decision": 0.5, "warning_enter": 0.5, "warning_leave": 0.4,
                       "critical_enter": 0.85, "critical_leave": 0.75, "dwell": 2,
                       **(thresholds or {})},
        "edge": {"file": EDGE_FILE, "quantization": "int8"},
        "files": files, "metrics": {},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    sign_bundle(folder, private)
    return folder, public


class ServerThread:
    """Serve an ASGI app with uvicorn in a background thread (lifespan included)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.host, self.port = host, port
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 120) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn stopped during startup (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start within {timeout}s")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 60) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
