"""Edge inference, batch 1, one thread: the edge model via LiteRT against the float TFLite model,
the Keras model called directly and Keras `predict`, all on the same windows in one process."""

from __future__ import annotations

import os
import sys

import numpy as np

from bench.common import BUNDLE, BUNDLE_KEY, DATA, save, summary_us, table, time_calls
from contract.bundle import verify_bundle
from contract.cmapss import COLUMNS, read_cmapss
from contract.preprocess import normalised_window
from edge_agent.scorer import Scorer


def windows(manifest, n: int = 200) -> list[np.ndarray]:
    data = read_cmapss(DATA / "test_FD001.txt")
    cols = [COLUMNS.index(f) for f in manifest.columns]
    out = []
    for unit in np.unique(data[:, 0])[:n]:
        rows = data[data[:, 0] == unit][:, cols]
        out.append(normalised_window(rows, manifest))
    return out


def main(repeat: int = 2000) -> dict:
    manifest = verify_bundle(BUNDLE, [BUNDLE_KEY])
    ws = windows(manifest)
    results = {}
    k = iter(range(10**9))

    def cycle(fn):
        return lambda: fn(ws[next(k) % len(ws)])

    edge = Scorer(BUNDLE / manifest.edge.file, manifest)
    flt = Scorer(BUNDLE / "model_float.tflite", manifest)
    results[f"edge {manifest.edge.quantization} (LiteRT)"] = time_calls(cycle(edge.raw), repeat)
    results["float32 TFLite (LiteRT)"] = time_calls(cycle(flt.raw), repeat)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    model = keras.saving.load_model(BUNDLE / "model.keras", compile=False)
    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    results["Keras model called directly (tf.function)"] = time_calls(
        cycle(lambda w: fn(tf.constant(w[None])).numpy()), max(200, repeat // 5))
    results["Keras model(x) eager"] = time_calls(
        cycle(lambda w: model(w[None], training=False).numpy()), max(100, repeat // 20), 5)
    results["Keras predict"] = time_calls(
        cycle(lambda w: model.predict(w[None], verbose=0)), max(50, repeat // 40), 5)

    base = np.median(results[f"edge {manifest.edge.quantization} (LiteRT)"])
    rows, record = [], {}
    for name, samples in results.items():
        s = summary_us(samples)
        ratio = float(np.median(samples) / base)
        rows.append([name, s["median_us"], s["p99_us"], f"{ratio:,.1f}x"])
        record[name] = {**s, "edge_speedup": ratio}
    table(f"Edge inference, batch 1, one thread ({manifest.version}, window "
          f"{manifest.window}x{len(manifest.features)})",
          ["model", "median µs", "p99 µs", "edge is faster by"], rows)
    save("edge_inference", {"bundle": manifest.version, "results": record})
    return record


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
