"""`python -m bench` (or `make bench`): every benchmark in turn; tables on stdout, JSON in
bench/results/. Pass names to run only some: `python -m bench wire_size edge_inference`."""

from __future__ import annotations

import importlib
import sys
import time

from bench.common import console

ALL = ["edge_inference", "edge_pipeline", "wire_size", "cloud_scoring", "cloud_ingest", "accuracy",
       "serverless"]


def main(names: list[str]) -> int:
    failed = []
    for name in names or ALL:
        t0 = time.perf_counter()
        console.rule(f"bench.{name}")
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            console.print(f"[yellow]skipped: {exc}[/]")
            continue
        try:
            module.main()
        except Exception as exc:  # one broken bench must not hide the others' figures
            console.print(f"[red]bench.{name} failed: {exc!r}[/]")
            failed.append(name)
        console.print(f"({time.perf_counter() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
