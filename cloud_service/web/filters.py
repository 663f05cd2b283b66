"""Formatting the templates use: times in UTC (the page's script shows them in the reader's
zone and as "12 s ago"), numbers with the precision an operator reads them at."""

from __future__ import annotations

import json
import time

import jinja2


def format_time(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def format_iso(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def format_age(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "never"
    seconds = max(0.0, now - epoch)
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def format_rul(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def format_probability(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def format_bytes(size: int | None) -> str:
    if size is None:
        return "–"
    for unit, scale in (("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def feature_count(features: str) -> int:
    """Models store their feature list as JSON."""
    return len(json.loads(features))


def install(env: jinja2.Environment) -> None:
    env.filters.update(time=format_time, iso=format_iso, age=format_age, rul=format_rul,
                       probability=format_probability, bytes=format_bytes,
                       feature_count=feature_count)
