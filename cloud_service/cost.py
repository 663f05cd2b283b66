"""Monthly cost of scoring a fleet on Lambda against a container deployment (pure).

Lambda bills every invocation (one per uplink batch the IoT rule forwards) and its duration
times its memory. A container bills by the hour whatever the load, in whole tasks, instances
or nodes sized to the scoring compute (at most `UTILISATION` of their vCPUs busy), at least one.
Compute per window comes from `python -m bench.serverless --json` or the defaults measured here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

HOURS_PER_MONTH = 730.0
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
UTILISATION = 0.6  # headroom a container keeps for bursts and the API
PRICES = Path(__file__).resolve().parent.parent / "deploy" / "aws" / "prices.json"
# Measured here (python -m bench.serverless, 2026-11-25, the busier of two runs; Lambda's CPU
# share at 512 MB is smaller still): a warm LiteRT invoke of one window, runtime client round
# trip included; Lambda's per-invoke overhead besides it; the container's batched per window.
LAMBDA_MS_PER_WINDOW = 3.7
LAMBDA_OVERHEAD_MS = 1.0
CONTAINER_MS_PER_WINDOW = 0.03
PLATFORMS = ("fargate", "ec2", "kubernetes")


class CostError(ValueError):
    """A fleet, a price table or a measurement the calculator cannot use; says why."""


@dataclass(frozen=True)
class Fleet:
    assets: float
    ticks_per_s: float
    stride: float = 1.0       # ticks between scored windows
    batch_s: float = 10.0     # seconds of ticks per uplink batch (one invocation each)
    memory_mb: float = 512.0  # the function's memory size

    def __post_init__(self) -> None:
        for name in ("assets", "ticks_per_s", "stride", "batch_s", "memory_mb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise CostError(f"{name.replace('_', '-')} must be a positive number, "
                                f"got {value!r}")

    def windows_per_s(self) -> float:
        return self.assets * self.ticks_per_s / self.stride

    def with_assets(self, n: float) -> Fleet:
        return Fleet(n, self.ticks_per_s, self.stride, self.batch_s, self.memory_mb)


@dataclass(frozen=True)
class Compute:
    lambda_ms_per_window: float = LAMBDA_MS_PER_WINDOW
    lambda_overhead_ms: float = LAMBDA_OVERHEAD_MS
    container_ms_per_window: float = CONTAINER_MS_PER_WINDOW


def load_prices(path: Path = PRICES) -> dict:
    try:
        prices = json.loads(Path(path).read_text())
        for section, keys in (("lambda", ("per_million_requests", "per_gb_second")),
                              ("fargate", ("per_vcpu_hour", "per_gb_hour", "task_vcpu",
                                           "task_gb")),
                              ("ec2", ("per_hour", "vcpu")),
                              ("kubernetes", ("cluster_per_hour", "node_per_hour",
                                              "node_vcpu"))):
            for key in keys:
                value = prices[section][key]
                if not isinstance(value, (int, float)) or value < 0:
                    raise CostError(f"{path}: {section}.{key} must be a number >= 0")
        return prices
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CostError(f"price table {path} is unusable: {type(exc).__name__}: {exc}") from None


def load_compute(bench_json: Path) -> Compute:
    """Per-window compute from the benchmark's JSON (the LiteRT record)."""
    try:
        records = json.loads(Path(bench_json).read_text())
        rec = next(r for r in records if "litert" in r["variant"])
        extra = next((r for r in records if r["variant"] == "container"), None)
        return Compute(lambda_ms_per_window=float(rec["warm_ms_median"]),
                       container_ms_per_window=float(extra["warm_ms_per_window"])
                       if extra and extra.get("warm_ms_per_window") else CONTAINER_MS_PER_WINDOW)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, StopIteration,
            ValueError) as exc:
        raise CostError(f"benchmark results {bench_json} are unusable: {exc!r}") from None


def lambda_month(fleet: Fleet, compute: Compute, prices: dict) -> float:
    invocations = fleet.assets / fleet.batch_s * SECONDS_PER_MONTH
    windows = fleet.windows_per_s() * SECONDS_PER_MONTH
    seconds = (invocations * compute.lambda_overhead_ms
               + windows * compute.lambda_ms_per_window) / 1000
    p = prices["lambda"]
    return (invocations / 1e6 * p["per_million_requests"]
            + seconds * fleet.memory_mb / 1024 * p["per_gb_second"])


def container_month(fleet: Fleet, compute: Compute, prices: dict, platform: str) -> float:
    busy_vcpus = fleet.windows_per_s() * compute.container_ms_per_window / 1000 / UTILISATION
    if platform == "fargate":
        p = prices["fargate"]
        tasks = max(1, math.ceil(busy_vcpus / p["task_vcpu"]))
        return tasks * HOURS_PER_MONTH * (p["task_vcpu"] * p["per_vcpu_hour"]
                                          + p["task_gb"] * p["per_gb_hour"])
    if platform == "ec2":
        p = prices["ec2"]
        return max(1, math.ceil(busy_vcpus / p["vcpu"])) * HOURS_PER_MONTH * p["per_hour"]
    if platform == "kubernetes":
        p = prices["kubernetes"]
        nodes = max(1, math.ceil(busy_vcpus / p["node_vcpu"]))
        return HOURS_PER_MONTH * (p["cluster_per_hour"] + nodes * p["node_per_hour"])
    raise CostError(f"platform {platform!r}: use one of {', '.join(PLATFORMS)}")


def break_even(fleet: Fleet, compute: Compute, prices: dict, platform: str,
               limit: int = 10_000_000) -> int | None:
    """The smallest fleet (assets) from which the container costs no more than Lambda; None
    when Lambda stays cheaper up to `limit` assets."""
    def container_wins(n: int) -> bool:
        f = fleet.with_assets(n)
        return container_month(f, compute, prices, platform) <= lambda_month(f, compute, prices)

    if container_wins(1):
        return 1
    hi = 2
    while hi <= limit and not container_wins(hi):
        hi *= 2
    if hi > limit:
        return None
    lo = hi // 2  # Lambda cheaper at lo; container wins at hi (costs grow with n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if container_wins(mid) else (mid, hi)
    return hi


def fleet_sizes(upto: int) -> list[int]:
    sizes = sorted({max(1, int(round(10 ** (k / 20)))) for k in range(0, 200)})
    return [n for n in sizes if n <= upto]


def plot(fleet: Fleet, compute: Compute, prices: dict, path: Path, upto: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = fleet_sizes(upto)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(sizes, [lambda_month(fleet.with_assets(n), compute, prices) for n in sizes],
            label="Lambda (LiteRT)", linewidth=2)
    for platform in PLATFORMS:
        ax.plot(sizes, [container_month(fleet.with_assets(n), compute, prices, platform)
                        for n in sizes], label=f"container: {platform}")
    ax.axvline(fleet.assets, color="grey", linestyle=":", label=f"this fleet ({fleet.assets:g})")
    ax.set(xscale="log", yscale="log", xlabel="assets", ylabel="USD per month",
           title=f"{fleet.ticks_per_s:g} ticks/s per asset, stride {fleet.stride:g}, "
                 f"prices {prices.get('region', '?')} {prices.get('as_of', '?')}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
