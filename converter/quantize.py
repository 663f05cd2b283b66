"""TFLite conversion of the inference model: plain float32 and the three edge modes.

- float32: the reference conversion, always written as model_float.tflite.
- int8: full integer (weights and activations int8, int8 input and output), calibrated on a
  representative set of training windows spread across life stages. Every op must run in
  integers: a float op left in the graph fails the conversion.
- dynamic: int8 weights, float activations (no calibration).
- float16: float16 weights, float32 compute.
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

MODES = ("int8", "dynamic", "float16")
EDGE_FILE = {"int8": "model_int8.tflite", "dynamic": "model_edge.tflite",
             "float16": "model_edge.tflite", "float32": "model_edge.tflite"}
_FLOAT_TYPES = (np.float16, np.float32, np.float64)


class QuantizationError(RuntimeError):
    """A conversion that failed or left float ops in a graph that must be integer-only."""


def _converter(model: keras.Model) -> tf.lite.TFLiteConverter:
    """A converter for the Keras 3 model, batch dimension left unfixed. (A concrete function
    handed to from_concrete_functions together with the model keeps the weights as resource
    variables that the converted graph never initialises.)"""
    return tf.lite.TFLiteConverter.from_keras_model(model)


def convert_float(model: keras.Model) -> bytes:
    return _converter(model).convert()


def convert(model: keras.Model, mode: str, representative: np.ndarray | None = None,
            calibration_batch: int = 1) -> bytes:
    """The edge model in `mode`; int8 needs `representative` windows (normalised)."""
    converter = _converter(model)
    if mode == "float32":
        return converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "int8":
        if representative is None or len(representative) == 0:
            raise QuantizationError("int8 needs a representative set of windows")
        reps = np.asarray(representative, np.float32)

        def dataset() -> Iterator[list[np.ndarray]]:
            for i in range(0, len(reps), calibration_batch):
                yield [reps[i:i + calibration_batch]]

        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode != "dynamic":
        raise ValueError(f"unknown quantization mode {mode!r}; choose one of {', '.join(MODES)}")
    try:
        flat = converter.convert()
    except Exception as exc:
        raise QuantizationError(f"{mode} conversion failed: {exc}") from exc
    if mode == "int8":
        check_integer_only(flat)
    return flat


def float_ops(flat: bytes) -> list[str]:
    """Ops of a TFLite model that read or write a float tensor, as 'OP(tensor: dtype)'."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=flat)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    found = []
    for op in interp._get_ops_details():
        for idx in [*op["inputs"], *op["outputs"]]:
            t = tensors.get(int(idx))
            if t is not None and np.dtype(t["dtype"]).type in _FLOAT_TYPES:
                found.append(f"{op['op_name']}({t['name']}: {np.dtype(t['dtype']).name})")
    return found


def check_integer_only(flat: bytes) -> None:
    found = float_ops(flat)
    if found:
        shown = "; ".join(found[:20]) + (f"; ... {len(found) - 20} more" if len(found) > 20 else "")
        raise QuantizationError(f"int8 model still has {len(found)} float tensor use(s) "
                                f"(ops fell back to float): {shown}")
