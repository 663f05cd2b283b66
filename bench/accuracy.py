"""Accuracy of the shipped bundles on C-MAPSS FD001 (the default bundle) and FD002 (six operating
regimes), standard protocol (last window of each test unit against RUL_FDxxx, truth capped at
the bundle's RUL cap): the float Keras model (what the cloud runs) and the edge model through
LiteRT side by side, next to published figures; edge-vs-float parity over every test window; and
the size of every model file.

    .venv/bin/python -m bench accuracy

FD002 needs `train_FD002.txt`'s siblings `test_FD002.txt` and `RUL_FD002.txt` in the data folder
(`PDM_DATA_DIR`, default ../shared/data/cmapss); without them that subset is skipped, as is a
subset whose bundle is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.common import BUNDLE, BUNDLE_KEY, DATA, REPO, console, save, table
from contract.manifest import FLOAT_TFLITE, KERAS_MODEL

FD002_BUNDLE = Path(os.environ.get("PDM_BENCH_FD002_BUNDLE", REPO / "models" / "fd002"))
SUBSETS = {"FD001": BUNDLE, "FD002": FD002_BUNDLE}

# (subset, model, RUL RMSE, source). Only figures checked against the source are listed.
PUBLISHED = [
    ("FD001", "LSTM regression (Zheng et al. 2017)", 16.14,
     "Long Short-Term Memory Network for Remaining Useful Life estimation, IEEE ICPHM 2017 "
     "(as quoted in arXiv:2604.27234)"),
    ("FD001", "Deep CNN (Li, Ding, Sun 2018)", 12.61,
     "Remaining useful life estimation in prognostics using deep convolution neural networks, "
     "Reliability Engineering & System Safety 172"),
]


def _subset(name: str, bundle: Path) -> dict | None:
    from converter.verify import verify

    if not (bundle / "manifest.json").is_file():
        console.print(f"[yellow]{name}: no bundle at {bundle}, skipped[/]")
        return None
    if not (DATA / f"test_{name}.txt").is_file():
        console.print(f"[yellow]{name}: no test_{name}.txt in {DATA}, skipped[/]")
        return None
    v = verify(bundle, [BUNDLE_KEY], DATA)
    m = v.manifest
    rows, record = [], {"bundle": m.version, "path": str(bundle), "protocol": v.test.protocol,
                        "edge_mode": m.edge.quantization, "models": {}}
    for model, x in (("float Keras, cloud (ours)", v.keras_metrics),
                     (f"edge {m.edge.quantization} via LiteRT (ours)", v.edge_metrics)):
        rows.append([model, f"{x['precision']:.3f}", f"{x['recall']:.3f}", f"{x['f1']:.3f}",
                     f"{x['rmse']:.2f}", f"{x['nasa_score']:.0f}", "this run"])
        record["models"][model] = x
    for subset, model, rmse, source in PUBLISHED:
        if subset == name:
            rows.append([model, "-", "-", "-", f"{rmse:.2f}", "-", source])
    table(f"{name} accuracy ({v.test.protocol})",
          ["model", "precision", "recall", "F1 (H=30)", "RUL RMSE", "NASA score", "source"],
          rows)
    a = v.agreement
    table(f"{name} edge vs float over every test window",
          ["windows", "decisions agree", "max prob. diff", "mean prob. diff", "max RUL diff"],
          [[a["windows"], f"{a['decision_agreement']:.3%}", f"{a['max_prob_diff']:.4f}",
            f"{a['mean_prob_diff']:.5f}", f"{a['max_rul_diff']:.2f}"]])
    record["agreement"] = a
    sizes = [[file, (bundle / file).stat().st_size]
             for file in (KERAS_MODEL, FLOAT_TFLITE, m.edge.file)]
    modes = []
    for mode, x in m.metrics.items():  # every mode measured when the bundle was trained
        if "size_bytes" in x:
            modes.append([mode, f"{int(x['size_bytes']):,}", f"{x['invoke_us_median']:.0f}",
                          f"{x['f1']:.3f}", f"{x['rmse']:.2f}",
                          f"{x.get('decision_agreement', 1.0):.3%}",
                          f"{x.get('max_prob_diff', 0.0):.4f}"])
    table(f"{name} bundle files (bytes)", ["file", "bytes"], [[n, f"{b:,}"] for n, b in sizes])
    table(f"{name} every edge mode, as measured at training",
          ["mode", "bytes", "median invoke us", "F1", "RUL RMSE", "decisions agree",
           "max prob. diff"], modes)
    record["sizes"] = dict(sizes)
    return record


def main() -> dict:
    record: dict = {"subsets": {}}
    for name, bundle in SUBSETS.items():
        found = _subset(name, bundle)
        if found is not None:
            record["subsets"][name] = found
    save("accuracy", record)
    return record


if __name__ == "__main__":
    main()
