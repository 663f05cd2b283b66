"""Serverless scoring: Lambda handlers (LiteRT float and TensorFlow/Keras) against the container.

Each handler runs under the real runtime client (`awslambdaric`) in a fresh process, driven by a
local Lambda Runtime API endpoint, as Lambda drives it. Cold start: process start to the first
response (imports, bundle verification and model load included). Warm: one more invocation of
one window, request queued to response received. Package: the zip build's unzipped size
(`cloud_service.serverless.package`: the distributions the warm handler imported, plus the
project and bundle). Peak memory: the handler process's VmHWM. The container row is the
cloud service's own model call (`cloud_service.model.KerasModel`, traced tf.function, already
warm) on the same windows: one window per call, and per window in a batch of 256.
Published figures (Keras .h5 inside Lambda) are printed beside them for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.cloud_scoring import unit_series
from bench.common import BUNDLE, BUNDLE_KEY, REPO, save, table
from cloud_service.serverless.local_runtime import RuntimeApi
from cloud_service.serverless.package import bundle_files, files_of, imported_modules, unzipped_mb
from contract.bundle import verify_bundle
from contract.preprocess import normalise, sliding_windows

PUBLISHED = {"lambda_cold_ms": 1200.0, "lambda_warm_ms": 300.0, "container_warm_ms": 50.0,
             "lambda_month_usd_1m_requests": 0.20, "container_month_usd": 40.0}
TARGETS = {"litert_cold_start_ms": 600.0, "litert_cold_vs_tensorflow": 1 / 3,
           "litert_warm_ms_median": 50.0}


def http_event(windows: np.ndarray) -> dict:
    return {"version": "2.0", "routeKey": "POST /score", "rawPath": "/score",
            "requestContext": {"http": {"method": "POST", "path": "/score"}},
            "body": json.dumps({"windows": windows.tolist()}), "isBase64Encoded": False}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_handler(runtime: str, windows: np.ndarray, warm: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), PDM_BUNDLE=str(BUNDLE),
               PDM_BUNDLE_KEY=str(BUNDLE_KEY), PDM_MODEL_RUNTIME=runtime,
               TF_CPP_MIN_LOG_LEVEL="2")
    one = http_event(windows[:1])
    with RuntimeApi() as api:
        env["AWS_LAMBDA_RUNTIME_API"] = api.address
        rid = api.submit(one)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "awslambdaric",
                                 "cloud_service.serverless.http.handler"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            first = api.wait(rid, timeout=300)
            cold = (first.answered_at - t0) * 1000
            if not (first.ok and first.body["statusCode"] == 200):
                raise RuntimeError(f"{runtime} handler failed: {first.body}")
            samples = []
            for i in range(warm):
                event = http_event(windows[i % len(windows):i % len(windows) + 1])
                t = time.perf_counter()
                res = api.wait(api.submit(event))
                samples.append((res.answered_at - t) * 1000)
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.kill()
            proc.wait()
    return {"cold_start_ms": cold, "warm_ms_median": float(np.median(samples)),
            "warm_ms_p99": float(np.percentile(samples, 99)), "peak_rss_mb": rss,
            "warm_calls": warm}


def package_mb(runtime: str) -> float:
    env = {"PDM_BUNDLE": str(BUNDLE), "PDM_BUNDLE_KEY": str(BUNDLE_KEY)}
    files = files_of(imported_modules(runtime, env))
    return unzipped_mb(files | bundle_files(BUNDLE, BUNDLE_KEY))


def container_row(windows: np.ndarray, warm: int) -> dict:
    """The container's model, warm, in this process (TensorFlow imported only here)."""
    from cloud_service.model import KerasModel
    manifest = verify_bundle(BUNDLE, [BUNDLE_KEY])
    model = KerasModel(BUNDLE, manifest)
    x = normalise(windows, manifest)[0]
    for i in range(20):
        model(x[i % len(x):i % len(x) + 1])
    samples = []
    for i in range(warm):
        t = time.perf_counter()
        model(x[i % len(x):i % len(x) + 1])
        samples.append((time.perf_counter() - t) * 1000)
    batch = np.resize(x, (256, *x.shape[1:]))
    model(batch)
    t = time.perf_counter()
    for _ in range(5):
        model(batch)
    per_window = (time.perf_counter() - t) * 1000 / (5 * len(batch))
    return {"variant": "container (KerasModel, warm, in-process)", "cold_start_ms": None,
            "warm_ms_median": float(np.median(samples)),
            "warm_ms_p99": float(np.percentile(samples, 99)), "package_mb": None,
            "peak_rss_mb": None, "warm_ms_per_window": per_window, "warm_calls": warm}


def main(argv: list[str] | None = None) -> list[dict]:
    """`argv` None (the `python -m bench` runner): the defaults."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warm", type=int, default=200, help="warm invocations per handler")
    ap.add_argument("--json", type=Path, help="write the per-variant records here")
    args = ap.parse_args(argv if argv is not None else [])
    manifest = verify_bundle(BUNDLE, [BUNDLE_KEY])
    series = [s for s in unit_series(manifest, 20) if len(s) >= manifest.window]
    windows = np.concatenate([sliding_windows(s, manifest.window) for s in series])[:512]
    records = []
    for runtime in ("litert", "tensorflow"):
        rec = {"variant": f"lambda-{runtime}", **run_handler(runtime, windows, args.warm),
               "package_mb": package_mb(runtime)}
        records.append(rec)
    records.append(container_row(windows, args.warm))
    lit, tf = records[0], records[1]
    rows = [[r["variant"], r["cold_start_ms"] if r["cold_start_ms"] is not None else "-",
             r["warm_ms_median"], f"{r['warm_ms_p99']:.2f}",
             r["package_mb"] if r["package_mb"] is not None else "-",
             r["peak_rss_mb"] if r["peak_rss_mb"] is not None else "-"] for r in records]
    rows.append(["published: Lambda, Keras .h5", PUBLISHED["lambda_cold_ms"],
                 PUBLISHED["lambda_warm_ms"], "-", "-", "-"])
    rows.append(["published: container", "-", PUBLISHED["container_warm_ms"], "-", "-", "-"])
    table(f"Serverless scoring, one window per request ({manifest.version}; W={manifest.window},"
          f" {len(manifest.features)} features)",
          ["variant", "cold start ms", "warm ms median", "warm ms p99", "package MB",
           "peak RSS MB"], rows)
    checks = {
        "litert cold start <= 600 ms": lit["cold_start_ms"] <= TARGETS["litert_cold_start_ms"],
        "litert cold start < 1/3 of tensorflow": lit["cold_start_ms"]
        < tf["cold_start_ms"] * TARGETS["litert_cold_vs_tensorflow"],
        "litert warm median <= 50 ms": lit["warm_ms_median"] <= TARGETS["litert_warm_ms_median"],
    }
    for name, ok in checks.items():
        print(f"target {name}: {'met' if ok else 'MISSED'}")
    print(f"container per window in a batch of 256: {records[2]['warm_ms_per_window']:.3f} ms")
    path = save("serverless", {"bundle": manifest.version, "records": records,
                               "published": PUBLISHED, "targets": TARGETS,
                               "targets_met": checks})
    print(f"wrote {path}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
        print(f"wrote {args.json}")
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
