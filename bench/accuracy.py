"""Accuracy of the default bundle on FD001 (standard protocol: last window of each test unit
against RUL_FD001), float Keras and the edge model side by side, next to published figures;
and the size of every model file.

    .venv/bin/python -m bench.accuracy
"""

from __future__ import annotations

from bench.common import BUNDLE, BUNDLE_KEY, DATA, save, table
from contract.manifest import FLOAT_TFLITE, KERAS_MODEL

PUBLISHED = [
    # (model, F1, RMSE, source)
    ("Keras LSTM example (binary, 93 units with >= 50 cycles)", 0.96, None,
     "Azure/lstms_for_predictive_maintenance, Binary classification notebook"),
    ("LSTM regression (Zheng et al. 2017)", None, 16.14,
     "Long Short-Term Memory Network for Remaining Useful Life estimation, IEEE ICPHM 2017"),
    ("Deep CNN (Li, Ding, Sun 2018)", None, 12.61,
     "Remaining useful life estimation in prognostics using deep convolution neural networks, "
     "Reliability Engineering & System Safety 172"),
]


def main() -> dict:
    from converter.verify import verify

    v = verify(BUNDLE, [BUNDLE_KEY], DATA)
    m = v.manifest
    rows, record = [], {"bundle": m.version, "protocol": v.test.protocol, "models": {}}
    for name, x in (("float Keras (ours)", v.keras_metrics),
                    (f"edge {m.edge.quantization} via LiteRT (ours)", v.edge_metrics)):
        rows.append([name, f"{x['accuracy']:.3f}", f"{x['precision']:.3f}",
                     f"{x['recall']:.3f}", f"{x['f1']:.3f}", f"{x['rmse']:.2f}",
                     f"{x['nasa_score']:.0f}", "this run"])
        record["models"][name] = x
    for name, f1, rmse, source in PUBLISHED:
        rows.append([name, "-", "-", "-", "-" if f1 is None else f"{f1:.2f}",
                     "-" if rmse is None else f"{rmse:.2f}", "-", source])
    table(f"FD001 accuracy ({v.test.protocol})",
          ["model", "accuracy", "precision", "recall", "F1 (H=30)", "RUL RMSE", "NASA score",
           "source"], rows)
    a = v.agreement
    table("edge vs float over every test window",
          ["windows", "decisions agree", "max prob. diff", "mean prob. diff"],
          [[a["windows"], f"{a['decision_agreement']:.3%}", f"{a['max_prob_diff']:.4f}",
            f"{a['mean_prob_diff']:.5f}"]])
    record["agreement"] = a

    sizes = []
    for file in (KERAS_MODEL, FLOAT_TFLITE, m.edge.file):
        sizes.append([file, (BUNDLE / file).stat().st_size])
    for mode, x in m.metrics.items():  # every edge mode measured when the bundle was trained
        if "size_bytes" in x:
            sizes.append([f"{mode} (measured at training)", int(x["size_bytes"])])
    table("model sizes (bytes)", ["model", "bytes"], [[n, f"{b:,}"] for n, b in sizes])
    record["sizes"] = dict(sizes)
    save("accuracy", record)
    return record


if __name__ == "__main__":
    main()
