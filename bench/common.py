"""Shared helpers: repeated timing, percentiles, a printed table and a JSON record per bench."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
BUNDLE = Path(os.environ.get("PDM_BENCH_BUNDLE", REPO / "models" / "default"))
BUNDLE_KEY = Path(os.environ.get("PDM_BENCH_BUNDLE_KEY",
                                 REPO / "models" / "default_signing_key.pub"))
DATA = Path(os.environ.get("PDM_DATA_DIR", REPO.parent / "shared" / "data" / "cmapss"))
if not (DATA / "test_FD001.txt").exists():
    DATA = REPO / "data" / "cmapss"
console = Console(width=None if sys.stdout.isatty() else 150)


def time_calls(fn: Callable[[], object], repeat: int, warmup: int = 20) -> np.ndarray:
    """Seconds per call of `fn`, measured `repeat` times after `warmup` calls."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeat)
    for i in range(repeat):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out


def summary_us(samples: np.ndarray) -> dict:
    return {"median_us": float(np.median(samples) * 1e6),
            "p99_us": float(np.percentile(samples, 99) * 1e6), "n": int(len(samples))}


def machine() -> dict:
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "processor": _cpu_name()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[f"{v:,.1f}" if isinstance(v, float) else str(v) for v in r])
    console.print(t)


def save(name: str, record: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {"bench": name, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine(), **record}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
