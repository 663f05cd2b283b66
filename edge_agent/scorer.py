"""Scores windows with the bundle's edge model through a TFLite interpreter.

Runtime chain: `ai_edge_litert` (LiteRT), then `tflite_runtime`, then `tensorflow.lite` only if
TensorFlow is already imported by someone else. The agent itself never imports TensorFlow.
"""

from __future__ import annotations

import importlib
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.manifest import Manifest
from contract.preprocess import Normaliser, from_model_output, rul_from_output, to_model_input


class ModelLoadError(RuntimeError):
    """The edge model cannot be loaded by any available runtime; the message says why."""


def load_interpreter_class():
    """The first available Interpreter class and the runtime's name."""
    for module, name in (("ai_edge_litert.interpreter", "ai_edge_litert"),
                         ("tflite_runtime.interpreter", "tflite_runtime")):
        try:
            return importlib.import_module(module).Interpreter, name
        except ImportError:
            continue
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"].lite.Interpreter, "tensorflow.lite"
    raise ModelLoadError("no TFLite runtime is installed: pip install ai-edge-litert "
                         "(or tflite-runtime on platforms LiteRT has no wheel for)")


@dataclass(frozen=True)
class Score:
    probability: float
    rul: float


class Scorer:
    """One interpreter, batch 1, one thread; quantizes inputs and dequantizes outputs with the
    model's own scale and zero point. Calls are serialised by a lock: the updater self-tests a
    new model against the running one while the scoring loop uses it, and an interpreter
    invoked from two threads at once fails."""

    def __init__(self, model_path: Path, manifest: Manifest, num_threads: int = 1) -> None:
        interpreter_cls, self.runtime = load_interpreter_class()
        self.manifest = manifest
        self._lock = threading.Lock()
        try:
            self._interp = interpreter_cls(model_path=str(model_path), num_threads=num_threads)
            inp = self._interp.get_input_details()[0]
            shape = [1, manifest.window, len(manifest.features)]
            if list(inp["shape"]) != shape:
                self._interp.resize_tensor_input(inp["index"], shape)
            self._interp.allocate_tensors()
        except ModelLoadError:
            raise
        except Exception as exc:
            hint = ""
            if self.runtime == "tflite_runtime" and manifest.edge.quantization == "dynamic":
                hint = (" (tflite-runtime 2.14 cannot run dynamic-range models from current "
                        "TensorFlow; install ai-edge-litert or use an int8 or float bundle)")
            raise ModelLoadError(f"{self.runtime} cannot load {model_path}: {exc}{hint}") from None
        self.normaliser = Normaliser.of(manifest)
        self._in = self._interp.get_input_details()[0]
        self._out = self._interp.get_output_details()[0]
        if tuple(self._out["shape"][-1:]) != (2,):
            raise ModelLoadError(f"{model_path}: output shape {list(self._out['shape'])}, "
                                 "expected [batch, 2] (probability, rul_fraction)")

    def raw(self, window: np.ndarray) -> np.ndarray:
        """Model outputs (probability, rul_fraction) for one normalised (W, F) window."""
        x = to_model_input(window[None, ...], self._in)
        with self._lock:
            self._interp.set_tensor(self._in["index"], x)
            self._interp.invoke()
            y = self._interp.get_tensor(self._out["index"])[0]
        return from_model_output(y, self._out)

    def normalise(self, window: np.ndarray) -> np.ndarray:
        """A raw (W, C) window (the manifest's columns) as this model's input (W, F)."""
        return self.normaliser.apply(window)[0]

    def score(self, window: np.ndarray) -> Score:
        """Scores of one raw (W, C) window (the manifest's columns)."""
        p, frac = self.raw(self.normalise(window))
        return Score(float(min(max(p, 0.0), 1.0)), float(rul_from_output(frac, self.manifest)))
