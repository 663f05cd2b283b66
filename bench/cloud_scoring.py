"""Cloud scoring throughput: windows scored per second with batching against one model call per
window, side by side in one run, on the default bundle (or, when it is missing, a test bundle
of the same shape: LSTM(64) -> LSTM(32), unrolled, W=30, 14 features).

Two levels:
- model: the bundle's Keras model through the service's `tf.function`, on the same windows;
- service scorer: ticks in a SQLite store -> complete windows rebuilt, normalised, scored,
  predictions written (the service's Scorer with batch_max 512 against batch_max 1).
Then what input drift checks cost the scorer: ticks arrive in rounds of 10 per engine and
are scored round by round, with drift checks off and on (interval 0: every engine checked
after every round, far more often than the default 30 s; best of three runs each), and the
seconds per asset check.

    .venv/bin/python -m bench.cloud_scoring [--windows 4096]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import BUNDLE, BUNDLE_KEY, DATA, save, table
from cloud_service.drift import DriftOptions
from cloud_service.metrics import Metrics
from cloud_service.model import load_verified
from cloud_service.scoring import Scorer
from cloud_service.store import Received, SqliteStore
from contract.cmapss import COLUMNS, read_cmapss
from contract.drift import describe_training
from contract.manifest import Manifest, TrainingStats
from contract.payloads import UplinkBatch
from contract.preprocess import normalise, sliding_windows
from tests.support.cloud import make_bundle

BATCH = 512


def bundle(tmp: Path) -> tuple[Path, Path, str]:
    if (BUNDLE / "manifest.json").exists():
        return BUNDLE, BUNDLE_KEY, "default bundle"
    features = [f"sensor_{i}" for i in (2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21)]
    folder, key = make_bundle(tmp / "bench-1", tmp / "keys", version="bench-1",
                              features=features, window=30, lstm_units=(64, 32))
    return folder, key, "test bundle (models/default missing)"


def unit_series(manifest: Manifest, n_units: int) -> list[np.ndarray]:
    """Raw sensor rows per engine: C-MAPSS FD001 test units when the data and features fit,
    random numbers of the same shape otherwise."""
    try:
        data = read_cmapss(DATA / "test_FD001.txt")
        cols = [COLUMNS.index(f) for f in manifest.columns]
        return [data[data[:, 0] == u][:, cols].astype(np.float32)
                for u in np.unique(data[:, 0])[:n_units]]
    except (OSError, ValueError):
        rng = np.random.default_rng(0)
        return [rng.normal(size=(200, len(manifest.columns))).astype(np.float32)
                for _ in range(n_units)]


def model_level(model, x: np.ndarray, single: int) -> dict:
    model(x[:BATCH])
    model(x[:1])  # warm both paths
    t0 = time.perf_counter()
    for i in range(0, len(x), BATCH):
        model(x[i:i + BATCH])
    batched = len(x) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(single):
        model(x[i:i + 1])
    one = single / (time.perf_counter() - t0)
    return {"batched": batched, "one_per_window": one}


def engine_batch(manifest: Manifest, u: int, rows: np.ndarray, first: int) -> Received:
    n = len(rows)
    return Received(UplinkBatch(
        gateway="gw-bench", asset=f"engine-{u}", first_seq=first,
        timestamps=np.arange(first, first + n, dtype=np.float64),
        features=tuple(manifest.columns), values=rows, probability=np.full(n, 0.5, np.float32),
        rul=np.full(n, 50.0, np.float32), model_version="edge"), time.time())


def scorer_level(model, manifest: Manifest, series: list[np.ndarray], tmp: Path,
                 batch_max: int, limit_ticks: int | None = None) -> tuple[float, int]:
    store = SqliteStore(tmp / f"bench-{batch_max}.db")
    items = [engine_batch(manifest, u, rows[:limit_ticks] if limit_ticks else rows, 0)
             for u, rows in enumerate(series)]
    store.write_ingest(items, [], [])
    scorer = Scorer(store, model, manifest, Metrics(), lambda *_: None, batch_max=batch_max,
                    max_delay=0)
    t0 = time.perf_counter()
    scored = scorer.drain()
    rate = scored / (time.perf_counter() - t0)
    store.close()
    return rate, scored


def with_training_stats(manifest: Manifest, series: list[np.ndarray]) -> tuple[Manifest, str]:
    """The manifest with training statistics: its own, else the FD001 ones the tests commit
    (same features), else described from the series (a check costs the same either way)."""
    if manifest.training_stats is not None:
        return manifest, "the bundle's"
    committed = Path(__file__).resolve().parent.parent / "tests" / "data" / \
        "fd001_training_stats.json"
    if committed.exists() and manifest.regimes is None:
        stats = TrainingStats.model_validate_json(committed.read_text())
        if len(stats.regimes[0].features) == len(manifest.features):
            return manifest.model_copy(update={"training_stats": stats}), "FD001 (committed)"
    rows = np.concatenate(series)[:, :len(manifest.features)]
    return manifest.model_copy(update={"training_stats": describe_training(rows)}), "the series'"


def drift_level(model, manifest: Manifest, series: list[np.ndarray], tmp: Path,
                drift: DriftOptions | None, round_ticks: int = 10) -> dict:
    """Ticks arrive round by round (round_ticks per engine) and are scored after each round,
    with drift checks between the batches when `drift` is given."""
    store = SqliteStore(Path(tempfile.mkdtemp(dir=tmp)) / "bench-drift.db")
    metrics = Metrics()
    scorer = Scorer(store, model, manifest, metrics, lambda *_: None, batch_max=BATCH,
                    max_delay=0, drift=drift)
    longest = max(len(s) for s in series)
    scored, elapsed = 0, 0.0
    for first in range(0, longest, round_ticks):
        items = [engine_batch(manifest, u, rows[first:first + round_ticks], first)
                 for u, rows in enumerate(series) if first < len(rows)]
        inserted = store.write_ingest(items, [], [])
        t0 = time.perf_counter()
        scorer.notify(inserted)
        scored += scorer.drain()
        elapsed += time.perf_counter() - t0
    registry = metrics.registry
    checks = registry.get_sample_value("pdm_cloud_drift_checks_total") or 0.0
    check_s = registry.get_sample_value("pdm_cloud_drift_check_seconds_sum") or 0.0
    store.close()
    return {"windows_per_s": scored / elapsed, "windows": scored, "seconds": elapsed,
            "asset_checks": checks, "check_seconds": check_s,
            "ms_per_asset_check": 1000 * check_s / checks if checks else None}


def main(argv: list[str] | None = None) -> dict:
    """`argv` None (the `python -m bench` runner): the defaults."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=4096, help="windows for the model level")
    ap.add_argument("--single", type=int, default=300, help="one-per-window calls to time")
    args = ap.parse_args(argv if argv is not None else [])
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        folder, key, which = bundle(tmp)
        manifest, model = load_verified(folder, [key])
        series = unit_series(manifest, 100)
        windows = np.concatenate([normalise(sliding_windows(s, manifest.window), manifest)[0]
                                  for s in series if len(s) >= manifest.window])
        x = np.resize(windows, (args.windows, manifest.window, len(manifest.features)))
        m = model_level(model, x, args.single)
        s_batched, n_batched = scorer_level(model, manifest, series, tmp, BATCH)
        # One call per window: fewer ticks per engine so the run stays short.
        s_one, n_one = scorer_level(model, manifest, series[:20], tmp, 1,
                                    limit_ticks=manifest.window + 40)
        drift_manifest, stats_from = with_training_stats(manifest, series)
        # Off and on alternate, best of three each: a shared machine's load moves both alike.
        runs: dict[str, list[dict]] = {"off": [], "on": [], "default": []}
        for _ in range(3):
            runs["off"].append(drift_level(model, drift_manifest, series, tmp, None))
            runs["on"].append(drift_level(model, drift_manifest, series, tmp,
                                          DriftOptions(interval=0.0)))
            runs["default"].append(drift_level(model, drift_manifest, series, tmp,
                                               DriftOptions()))
        off, on, default = (max(runs[k], key=lambda r: r["windows_per_s"])
                            for k in ("off", "on", "default"))
    rows = [
        ["model call (tf.function)", m["batched"], m["one_per_window"],
         m["batched"] / m["one_per_window"]],
        ["service scorer (store -> windows -> model -> store)", s_batched, s_one,
         s_batched / s_one],
    ]
    table(f"Cloud scoring, windows/s ({manifest.version}, {which}; W={manifest.window}, "
          f"{len(manifest.features)} features, batch {BATCH})",
          ["level", f"batched ({BATCH})", "one call per window", "ratio"], rows)
    record = {
        "bundle": manifest.version, "bundle_kind": which, "window": manifest.window,
        "features": len(manifest.features), "batch": BATCH,
        "model": {"batched_windows_per_s": m["batched"],
                  "one_per_window_windows_per_s": m["one_per_window"],
                  "ratio": m["batched"] / m["one_per_window"], "windows": args.windows,
                  "single_calls": args.single},
        "scorer": {"batched_windows_per_s": s_batched, "batched_windows": n_batched,
                   "one_per_window_windows_per_s": s_one, "one_per_window_windows": n_one,
                   "ratio": s_batched / s_one},
    }
    table(f"Drift checks during scoring ({len(series)} engines, ticks in rounds of 10 per "
          f"engine; training statistics: {stats_from}; best of 3)",
          ["drift checks", "windows/s", "asset checks", "ms per asset check",
           "share of the scorer's time"],
          [["off", off["windows_per_s"], 0, None, None],
           *[[name, run["windows_per_s"], run["asset_checks"],
              f"{run['ms_per_asset_check'] or 0:.2f}",
              f"{run['check_seconds'] / run['seconds']:.1%}"]
             for name, run in (("on, every engine after every round", on),
                               ("on, default interval (30 s)", default))]])
    for name, run in (("after every round", on), ("at the default interval", default)):
        print(f"scoring rate with drift checks {name}: "
              f"{run['windows_per_s'] / off['windows_per_s']:.1%} of the rate without them")
    record["drift"] = {"off": off, "on": on, "default": default, "statistics": stats_from,
                       "runs": runs,
                       "rate_ratio": on["windows_per_s"] / off["windows_per_s"]}
    save("cloud_drift", {"bundle": manifest.version, "engines": len(series), "round_ticks": 10,
                         **record["drift"]})
    path = save("cloud_scoring", record)
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
