"""Screenshots of the web UI for docs/img/: runs the demo (every FD001 test engine replayed
through a real broker, cloud service and edge agent), waits until the replay has ended,
acknowledges one alert, and photographs each page in Debian's chromium (headless).

    python scripts/screenshots.py [--out docs/img] [--rate 20] [--asset engine-31]

Needs what the demo needs (mosquitto) plus `chromium` (apt-get install -y chromium) and
playwright (the dev extra). The demo's work folder is var/screenshots.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("PDM_CHROMIUM", "/usr/bin/chromium")  # Debian's package
GATEWAY = "gw-demo"


def start_demo(rate: float) -> tuple[subprocess.Popen, str, str]:
    """The demo process, its API address and its api_token (both read from what it prints)."""
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "demo.py"), "--rate",
                             str(rate), "--workdir", str(REPO / "var" / "screenshots")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    api = token = None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if m := re.search(r"cloud API (http://[\d.:]+)", line):
            api = m.group(1)
        if m := re.search(r"Bearer (\S+)\)", line):
            token = m.group(1)
        if "the replay has ended" in line:
            break
    if api is None or token is None:
        proc.kill()
        raise SystemExit("the demo ended before its replay did; see its output above")
    return proc, api, token


def call(api: str, token: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"{api}{path}", data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def acknowledge_one(api: str, token: str, asset: str) -> None:
    """The first critical alert of `asset`, acknowledged, so the alerts page shows both kinds."""
    alerts = call(api, token, f"/api/v1/alerts?asset={asset}&state=CRITICAL")["items"]
    if alerts:
        call(api, token, f"/api/v1/alerts/{alerts[0]['id']}/acknowledge",
             {"by": "j.doe", "note": "bearing noise confirmed on site; swap booked for Monday"})


def wait_for_drift(api: str, token: str, asset: str, limit: float = 90.0) -> None:
    """Drift is judged at most every `drift.interval` seconds, on ticks that arrived since the
    last check: wait until the photographed asset has a verdict over its whole replay."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        drift = call(api, token, f"/api/v1/assets/{GATEWAY}/{asset}/drift")
        if drift.get("state") != "unavailable" or "training statistics" in str(drift.get("reason")):
            return
        time.sleep(2)
    print(f"drift of {asset} still unavailable after {limit:.0f} s; photographed as it is")


def shoot(api: str, token: str, out: Path, asset: str) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(base_url=api, viewport={"width": 1280, "height": 860},
                                      device_scale_factor=1)
        page = context.new_page()
        page.goto("/sign-in")
        page.fill("input[name=token]", token)
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_url(f"{api}/")
        page.screenshot(path=out / "ui-fleet.png")
        page.goto(f"/assets/{GATEWAY}/{asset}")
        deadline = time.monotonic() + 20
        while not page.evaluate("!!(window.pdm.charts && window.pdm.charts.history && "
                                "window.pdm.charts.history.data[0].length && "
                                "Object.keys(window.pdm.charts.sensors).length)"):
            if time.monotonic() > deadline:
                raise SystemExit("the asset page drew no chart within 20 s")
            time.sleep(0.2)
        page.screenshot(path=out / "ui-asset.png", full_page=True)
        page.goto("/alerts?period=all")
        page.screenshot(path=out / "ui-alerts.png")
        page.goto("/models")
        page.screenshot(path=out / "ui-models.png")
        browser.close()
    print(f"screenshots in {out}: " + ", ".join(p.name for p in sorted(out.glob("ui-*.png"))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    ap.add_argument("--rate", type=float, default=20, help="ticks per second per engine")
    ap.add_argument("--asset", default="engine-31", help="the asset page to photograph")
    args = ap.parse_args()
    proc, api, token = start_demo(args.rate)
    try:
        try:
            acknowledge_one(api, token, args.asset)
        except urllib.error.HTTPError as exc:
            print(f"could not acknowledge an alert ({exc.code}): the alerts page shows none")
        wait_for_drift(api, token, args.asset)
        shoot(api, token, args.out, args.asset)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
