"""The operator web UI in a real browser (Debian's Chromium, driven by playwright) against a
running cloud service fed by a real edge agent replaying C-MAPSS engines; and the rules
behind the pages (fleet filter and sort, session and CSRF checks) as plain functions.

One system and one browser serve every browser test of the module: starting the cloud (it loads
the LSTM) and replaying the engines is the expensive part.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cloud_service.config import CloudConfig
from cloud_service.web.session import (
    Access,
    access_of,
    csrf_token,
    is_signed_in,
    session_write_refusal,
)
from cloud_service.web.views import FleetQuery, FleetRow, select_fleet
from contract.bundle import read_manifest
from edge_agent.sources.replay import unit_rows
from tests.conftest import DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY, REPO
from tests.support.broker import Mosquitto, free_port
from tests.support.cloud import ServerThread
from tests.support.system import TOKEN, System

# Debian's package; another Chromium (Ubuntu's snap: /snap/bin/chromium) through PDM_CHROMIUM
CHROMIUM = Path(os.environ.get("PDM_CHROMIUM", "/usr/bin/chromium"))
DATA = REPO / "data" / "cmapss" / "test_FD001.txt"
UNITS = [31, 34, 68, 81, 9, 44]  # four near failure (true RUL 7-8), two healthy (55, 54 cycles)
READ_TOKEN = "web-read-token-0123456789"
GATEWAY = "gw-web"


def _browser(test):
    """A test in the browser against the running system (it needs the default bundle)."""
    test = pytest.mark.slow(pytest.mark.browser(test))
    return pytest.mark.skipif(not (DEFAULT_BUNDLE / "manifest.json").exists(),
                              reason="no bundle")(test)


# -- the rules, no browser ----------------------------------------------------------------

def row(asset: str, state: str | None, rul: float | None = None, p: float | None = None,
        gateway: str = "gw", seen: float | None = 1.0) -> FleetRow:
    return FleetRow(gateway=gateway, asset=asset, state=state, state_since=None, rul=rul,
                    probability=p, edge_rul=None, edge_probability=None, last_seen=seen,
                    ticks=1, model_version=None, gateway_online=True)


FLEET = [row("a", "NORMAL", 100, 0.1), row("b", "CRITICAL", 5, 0.95),
         row("c", None), row("d", "WARNING", 20, 0.6, gateway="gw2"),
         row("e", "CRITICAL", 9, 0.9)]


def names(query: FleetQuery) -> list[str]:
    return [r.asset for r in select_fleet(FLEET, query).rows]


def test_fleet_sorts_the_most_urgent_first_and_unscored_last():
    assert names(FleetQuery()) == ["b", "e", "d", "a", "c"]
    assert names(FleetQuery(sort="rul")) == ["b", "e", "d", "a", "c"]
    # no value goes last in either direction
    assert names(FleetQuery(sort="rul", descending=True)) == ["a", "d", "e", "b", "c"]
    assert names(FleetQuery(sort="probability", descending=True)) == ["b", "e", "d", "a", "c"]
    assert names(FleetQuery(sort="asset", descending=True)) == ["e", "d", "c", "b", "a"]


def test_fleet_filters_by_state_gateway_and_text_and_counts_every_asset():
    assert names(FleetQuery(state="CRITICAL")) == ["b", "e"]
    assert names(FleetQuery(state="UNSCORED")) == ["c"]
    assert names(FleetQuery(gateway="gw2")) == ["d"]
    assert names(FleetQuery(text="GW2")) == ["d"]
    view = select_fleet(FLEET, FleetQuery(state="WARNING"), max_rows=10)
    assert (view.matched, view.total) == (1, 5)
    assert view.states == {"CRITICAL": 2, "WARNING": 1, "NORMAL": 1, "UNSCORED": 1}
    assert len(select_fleet(FLEET, FleetQuery(), max_rows=2).rows) == 2
    # a gateway that sent its status but no tick yet is counted, and offered in the filter
    status = {"gw": True, "gw2": False, "gw3": True}
    view = select_fleet(FLEET, FleetQuery(), gateways=status)
    assert (view.gateways, view.gateways_online, view.gateways_known) == (
        ["gw", "gw2", "gw3"], 2, 3)


def config(read_token: str | None) -> CloudConfig:
    return CloudConfig(api_token=TOKEN, api={"read_token": read_token})


def test_the_session_token_grants_what_the_api_token_grants():
    guarded, open_ = config(READ_TOKEN), config(None)
    assert access_of(guarded, TOKEN) is Access.WRITE
    assert access_of(guarded, READ_TOKEN) is Access.READ
    assert access_of(guarded, "wrong-token-0123456789") is Access.NONE
    assert access_of(guarded, None) is Access.NONE
    assert access_of(open_, None) is Access.READ
    assert access_of(open_, TOKEN) is Access.WRITE
    # a stale cookie in the open mode still reads, but is not shown as signed in
    assert access_of(open_, "stale-token-0123456789") is Access.READ
    assert not is_signed_in(open_, "stale-token-0123456789")
    assert is_signed_in(guarded, READ_TOKEN) and is_signed_in(open_, TOKEN)


def test_a_session_write_needs_the_api_token_same_origin_and_the_csrf_value():
    cfg, host = config(READ_TOKEN), "127.0.0.1:8000"
    good = csrf_token(TOKEN)
    assert session_write_refusal(cfg, TOKEN, good, f"http://{host}", host) is None
    assert session_write_refusal(cfg, TOKEN, good, None, host) is None
    assert session_write_refusal(cfg, READ_TOKEN, csrf_token(READ_TOKEN), None, host)[0] == 401
    assert session_write_refusal(cfg, TOKEN, None, None, host)[0] == 403
    assert session_write_refusal(cfg, TOKEN, csrf_token(READ_TOKEN), None, host)[0] == 403
    refused = session_write_refusal(cfg, TOKEN, good, "https://evil.example", host)
    assert refused is not None and refused[0] == 403 and "evil.example" in refused[1]


# -- the system and the browser -----------------------------------------------------------

@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Mosquitto, the cloud service (read token set) and an agent replaying six engines; yields
    once the cloud has stored every tick and scored every window."""
    work = tmp_path_factory.mktemp("web")
    broker = Mosquitto(work / "broker").start()
    system = System(work, broker, DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY, DATA, UNITS, rate=60,
                    gateway=GATEWAY, cloud_extra={"api": {"read_token": READ_TOKEN}})
    try:
        system.start_cloud()
        system.start_agent()
        rows, window = unit_rows(DATA), read_manifest(DEFAULT_BUNDLE).window
        want = {f"engine-{u}": len(rows[u]) - window + 1 for u in UNITS}
        deadline = time.monotonic() + 120
        while {a: len(system.predictions(a)) for a in want} != want:
            assert time.monotonic() < deadline, "the cloud did not score every window in time"
            time.sleep(0.5)
        yield system
    finally:
        system.stop()
        broker.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


class Visit:
    """One browser context (its own cookies) on the service; records every request and every
    console error, so a test can say the page needed nothing from another host."""

    def __init__(self, browser, base_url: str) -> None:
        self.base_url = base_url
        self.context = browser.new_context(base_url=base_url, viewport={"width": 1280,
                                                                          "height": 900})
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.allowed = [base_url]  # origins the pages may fetch from
        self.errors: list[str] = []
        self.static: list[tuple[str, int]] = []
        self.page.on("request", lambda req: self.requests.append(req.url))
        self.page.on("response", lambda resp: "/static/" in resp.url and self.static.append(
            (resp.url, resp.status)))
        # A refused fetch (a 401 the test asked for) is logged as "Failed to load resource";
        # static files are checked by their responses instead.
        self.page.on("console", lambda msg: msg.type == "error" and not msg.text.startswith(
            "Failed to load resource") and self.errors.append(msg.text))
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def sign_in(self, token: str, then: str = "/") -> None:
        self.page.goto(f"/sign-in?next={then}")
        self.page.fill("input[name=token]", token)
        self.page.click("#sign-in-form button[type=submit]")
        self.page.wait_for_url(f"{self.base_url}{then}")

    def wait_for(self, expression: str, timeout: float = 15) -> object:
        """Poll a JavaScript expression until it is truthy. (playwright's wait_for_function
        evaluates a string in the page, which the pages' CSP forbids, rightly.)"""
        deadline = time.monotonic() + timeout
        while True:
            value = self.page.evaluate(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.1)

    def api(self, path: str) -> tuple[int, dict]:
        """GET from inside the page: the browser sends its cookie, as the page's scripts do."""
        return self.page.evaluate(
            """async (path) => { const r = await fetch(path, {credentials: 'same-origin'});
                                 return [r.status, await r.json()]; }""", path)

    def close(self) -> None:
        assert not self.errors, self.errors
        assert self.static and all(status in (200, 304) for _, status in self.static), \
            self.static
        foreign = [u for u in self.requests
                   if not any(u.startswith(origin) for origin in self.allowed)]
        assert not foreign, f"the page fetched from elsewhere: {foreign}"
        self.context.close()


@pytest.fixture
def visit(browser, fleet):
    v = Visit(browser, fleet.api)
    yield v
    v.close()


def fleet_assets(visit: Visit) -> dict[str, str]:
    rows = visit.page.locator("#fleet-table tbody tr[data-asset]")
    return {rows.nth(i).get_attribute("data-asset"): rows.nth(i).get_attribute("data-state")
            for i in range(rows.count())}


@_browser
def test_no_token_no_page_and_a_wrong_token_is_refused(visit, fleet):
    page = visit.page
    response = page.goto("/")
    assert page.url.startswith(f"{fleet.api}/sign-in?next=")
    assert response is not None and response.status == 200  # the sign-in page, after a 303
    assert visit.api("/api/v1/assets")[0] == 401
    assert page.request.get("/ui/fleet").status == 401
    page.fill("input[name=token]", "not-the-token-0123456789")
    with page.expect_response(lambda r: r.url.endswith("/sign-in")) as answer:
        page.click("#sign-in-form button[type=submit]")
    assert answer.value.status == 401
    assert "neither the service's api.read_token nor its api_token" in page.inner_text(".error")
    assert not visit.context.cookies()
    assert fleet.metric('pdm_cloud_ui_sign_ins_total{result="refused"}') >= 1
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for body, status in (("token=&next=/", 422), ("a=1&b=2&c=3&d=4&e=5", 400),
                         ("token=" + "x" * 10_000, 413)):
        answer = page.request.post("/sign-in", data=body, headers=form)
        assert answer.status == status, (body[:20], answer.status)
    # a link to a page elsewhere is not followed after signing in (no open redirect)
    page.goto("/sign-in?next=//evil.example/")
    page.fill("input[name=token]", READ_TOKEN)
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_url(f"{fleet.api}/")


@_browser
def test_sign_in_keeps_the_token_in_a_strict_httponly_cookie_and_the_fleet_shows_every_asset(
        visit, fleet):
    visit.sign_in(READ_TOKEN)
    cookie, = visit.context.cookies()
    assert cookie["value"] == READ_TOKEN and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert visit.page.evaluate("document.cookie") == ""  # no script can read it
    shown = fleet_assets(visit)
    assert set(shown) == {f"engine-{u}" for u in UNITS}
    api_states = {a["asset"]: a["state"] for a in fleet.get("/api/v1/assets")}
    assert shown == api_states
    assert {shown[f"engine-{u}"] for u in (31, 34, 68, 81)} <= {"WARNING", "CRITICAL"}
    assert visit.page.locator("#fleet-table .dot.online").count() == len(UNITS)
    assert visit.api("/api/v1/assets")[0] == 200  # the API takes the cookie for reads


@_browser
def test_fleet_filters_sorts_and_updates_itself(visit, fleet):
    visit.sign_in(READ_TOKEN)
    page = visit.page
    page.select_option("select[name=state]", "NORMAL")
    page.wait_for_url("**/?state=NORMAL")
    visit.wait_for("document.querySelectorAll('#fleet-table tr[data-state=NORMAL]')"
                           ".length === document.querySelectorAll('#fleet-table tr[data-asset]')"
                           ".length")
    normal = {a["asset"] for a in fleet.get("/api/v1/assets") if a["state"] == "NORMAL"}
    assert set(fleet_assets(visit)) == normal
    page.select_option("select[name=state]", "")
    page.select_option("select[name=sort]", "rul")
    page.wait_for_url("**/?sort=rul")
    visit.wait_for("document.querySelectorAll('#fleet-table tr[data-asset]').length"
                           f" === {len(UNITS)}")
    # The address changes before the re-sorted table arrives, and the system is still scoring
    # (the API may be newer than the page): wait for the page's own RULs to be in order.
    shown_ruls = ("Array.from(document.querySelectorAll("
                  "'#fleet-table tbody tr[data-asset] td[data-col=rul]'))"
                  ".map(c => parseFloat(c.firstChild.textContent))")
    visit.wait_for(f"(r => r.length === {len(UNITS)} && r.every((v, i) => i === 0 || "
                   f"r[i - 1] <= v))({shown_ruls})")
    assert set(fleet_assets(visit)) == {a["asset"] for a in fleet.get("/api/v1/assets")}
    page.fill("input[name=q]", "engine-3")
    visit.wait_for("document.querySelectorAll('#fleet-table tr[data-asset]').length"
                           " === 2")
    assert set(fleet_assets(visit)) == {"engine-31", "engine-34"}
    page.reload()  # the filter lives in the address, so it survives a reload
    assert set(fleet_assets(visit)) == {"engine-31", "engine-34"}
    assert page.input_value("input[name=q]") == "engine-3"
    visit.wait_for("window.pdm.updates >= 1", timeout=10)  # live: polled again
    refused = page.request.get("/ui/fleet?state=BROKEN")
    assert refused.status == 422 and "CRITICAL" in refused.text()


@_browser
def test_asset_page_charts_edge_and_cloud_history_and_chosen_sensors(visit, fleet):
    visit.sign_in(READ_TOKEN, "/assets/gw-web/engine-31")
    page = visit.page
    predictions = fleet.predictions("engine-31")
    visit.wait_for("window.pdm.charts && window.pdm.charts.history && "
                           f"window.pdm.charts.history.data[0].length === {len(predictions)}")
    data = page.evaluate("window.pdm.charts.history.data")
    assert data[0] == [p["tick_time"] for p in predictions]
    assert data[1] == pytest.approx([p["probability"] for p in predictions])  # cloud
    assert data[2] == pytest.approx([p["edge_probability"] for p in predictions])  # edge
    assert None not in data[2] and None not in data[4]  # the agent scored every window
    assert data[3] == pytest.approx([p["rul"] for p in predictions])
    assert page.locator("#history-chart canvas").count() == 1
    alerts = page.locator("#asset-alerts li")
    assert alerts.count() >= 1 and "critical" in page.inner_text("#asset-alerts")
    # three sensors drawn by default; ticking a fourth adds its chart and goes into the address
    visit.wait_for("Object.keys(window.pdm.charts.sensors).length === 3")
    names = page.eval_on_selector_all("#sensor-picker input", "els => els.map(e => e.value)")
    page.check(f"#sensor-picker input[value={names[5]}]")
    visit.wait_for(f"window.pdm.charts.sensors['{names[5]}'] !== undefined")
    values = page.evaluate(f"window.pdm.charts.sensors['{names[5]}'].data[1]")
    ticks = fleet.ticks("engine-31")
    assert values == pytest.approx([t["values"][names[5]] for t in ticks], rel=1e-6)
    assert f"sensors={names[0]}%2C{names[1]}%2C{names[2]}%2C{names[5]}" in page.url
    # what is not there is said so
    assert page.request.get("/assets/gw-web/engine-999").status == 404
    wrong = page.request.get("/assets/gw-web/engine-31?sensors=no_such_sensor")
    assert wrong.status == 422 and names[0] in wrong.json()["detail"]


@_browser
def test_models_and_dead_letters_pages(visit, fleet):
    visit.sign_in(READ_TOKEN, "/models")
    page = visit.page
    version = read_manifest(DEFAULT_BUNDLE).version
    assert page.locator(f"#models-table tr[data-version='{version}']").count() == 1
    assert "scoring" in page.inner_text(f"#models-table tr[data-version='{version}']")
    page.goto("/dead-letters")
    assert "sign in" in page.inner_text(".notice")  # admin data, the read token is not enough
    page.click("header form button")  # sign out
    page.wait_for_url("**/sign-in")
    visit.sign_in(TOKEN, "/dead-letters")
    assert page.locator("#dead-letters-table").count() == 1


def post_from_page(visit: Visit, path: str, body: dict, csrf: bool) -> tuple[int, dict]:
    """POST JSON from inside the page, with or without the page's CSRF value."""
    return visit.page.evaluate(
        """async ([path, body, csrf]) => {
             const headers = {'Content-Type': 'application/json'};
             if (csrf) headers['X-CSRF-Token'] = window.pdm.csrf();
             const r = await fetch(path, {method: 'POST', credentials: 'same-origin', headers,
                                          body: JSON.stringify(body)});
             return [r.status, await r.json()]; }""", [path, body, csrf])


@_browser
def test_an_acknowledgement_is_stored_with_who_and_when_and_survives_a_reload(visit, fleet):
    visit.sign_in(TOKEN, "/alerts")
    page = visit.page
    row = page.locator("#alerts-table tr.open").first
    alert_id = row.get_attribute("data-alert-id")
    before = time.time()
    row.locator("input[name=by]").fill("j.doe")
    row.locator("input[name=note]").fill("bearing noise confirmed on site")
    row.locator("button[type=submit]").click()
    selector = f"#alerts-table tr[data-alert-id='{alert_id}']"
    visit.wait_for(f"document.querySelector(\"{selector}\").classList.contains('acked')")
    page.reload()
    assert "acked" in page.get_attribute(selector, "class")
    assert page.inner_text(f"{selector} .ack-by") == "j.doe"
    assert page.inner_text(f"{selector} .ack-note") == "bearing noise confirmed on site"
    stored, = [a for a in fleet.pages("/api/v1/alerts", "after_id") if str(a["id"]) == alert_id]
    assert stored["acknowledged_by"] == "j.doe"
    assert stored["ack_note"] == "bearing noise confirmed on site"
    assert before - 1 <= stored["acknowledged_at"] <= time.time() + 1
    # the name is remembered for the next one; a second acknowledgement is refused by name
    assert page.input_value("#alerts-table tr.open input[name=by] >> nth=0") == "j.doe"
    status, body = post_from_page(visit, f"/api/v1/alerts/{alert_id}/acknowledge",
                                  {"by": "someone-else"}, csrf=True)
    assert status == 409 and "j.doe" in body["detail"]
    # a note is text, whatever it holds
    other = page.locator("#alerts-table tr.open").first.get_attribute("data-alert-id")
    html = '<img src=x onerror="document.title=1"> & <b>bold</b>'
    assert post_from_page(visit, f"/api/v1/alerts/{other}/acknowledge",
                          {"by": "k.lee", "note": html}, csrf=True)[0] == 200
    page.reload()
    assert page.inner_text(f"#alerts-table tr[data-alert-id='{other}'] .ack-note") == html
    assert page.locator("#alerts-table img, #alerts-table b:not(.ack-by)").count() == 0
    # the filters: acknowledged or not, the state moved to
    page.select_option("select[name=acknowledged]", "yes")
    page.wait_for_url("**/alerts?acknowledged=yes")
    visit.wait_for("document.querySelectorAll('#alerts-table tr.open').length === 0")
    shown = page.eval_on_selector_all("#alerts-table tr[data-alert-id]",
                                      "rows => rows.map(r => r.dataset.alertId)")
    assert sorted(shown) == sorted([alert_id, other])
    page.goto("/alerts?acknowledged=no&state=CRITICAL")
    states = page.eval_on_selector_all("#alerts-table tr[data-alert-id] .badge:last-of-type",
                                       "els => els.map(e => e.textContent)")
    assert states and set(states) == {"critical"}
    assert alert_id not in page.eval_on_selector_all(
        "#alerts-table tr[data-alert-id]", "rows => rows.map(r => r.dataset.alertId)")


@_browser
def test_a_write_from_the_session_needs_the_csrf_value_and_the_api_token(visit, fleet):
    open_alert = fleet.get("/api/v1/alerts?acknowledged=false&limit=1")["items"][0]
    path = f"/api/v1/alerts/{open_alert['id']}/acknowledge"
    visit.sign_in(TOKEN, "/alerts")
    status, body = post_from_page(visit, path, {"by": "forger"}, csrf=False)
    assert status == 403 and "X-CSRF-Token" in body["detail"]
    visit.page.click("header form button")  # sign out, then in with the read token
    visit.page.wait_for_url("**/sign-in")
    visit.sign_in(READ_TOKEN, "/alerts")
    assert visit.page.locator("#alerts-table form[data-ack]").count() == 0  # no button
    assert post_from_page(visit, path, {"by": "reader"}, csrf=True)[0] == 401
    stored = fleet.get(f"/api/v1/alerts?after_id={open_alert['id'] - 1}&limit=1")["items"][0]
    assert stored["acknowledged_by"] is None


@pytest.fixture(scope="module")
def open_service(fleet, tmp_path_factory):
    """A second service on the same store with no read token (pages open, as the API is)."""
    from cloud_service.api import create_app

    work = tmp_path_factory.mktemp("open")
    cfg = CloudConfig(
        api_token=TOKEN, share_group="web-open", client_id="pdm-cloud-web-open",
        broker={"host": fleet.broker.host, "port": fleet.broker.port},
        store=yaml_store(fleet), registry={"path": str(work / "registry")},
        bundle={"path": str(work / "no-bundle"), "trusted_keys": [str(DEFAULT_BUNDLE_KEY)],
                "wait": True},
        http={"host": "127.0.0.1", "port": free_port()})
    server = ServerThread(create_app(cfg), cfg.http.host, cfg.http.port).start()
    yield server
    server.stop()


def yaml_store(system: System) -> dict:
    import yaml

    return yaml.safe_load(system.cloud_cfg.read_text())["store"]


@_browser
def test_with_no_read_token_the_pages_are_open_and_writes_still_need_the_api_token(
        browser, open_service):
    visit = Visit(browser, open_service.url)
    try:
        page = visit.page
        page.goto("/")
        assert page.url == f"{open_service.url}/"
        assert set(fleet_assets(visit)) == {f"engine-{u}" for u in UNITS}
        assert visit.api("/api/v1/assets")[0] == 200
        assert "open" in page.inner_text("header .who")
        page.goto("/dead-letters")
        assert "sign in" in page.inner_text(".notice")
        status = page.evaluate("""async () => (await fetch('/api/v1/rollouts/0/pause',
                                  {method: 'POST'})).status""")
        assert status == 401
    finally:
        visit.close()


def http_status(url: str, **headers: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10):
            return 200
    except urllib.error.HTTPError as exc:
        return exc.code


@_browser
def test_static_files_are_served_locally_and_pages_forbid_foreign_scripts(fleet):
    assert http_status(f"{fleet.api}/static/vendor/uplot/uPlot.iife.min.js") == 200
    assert http_status(f"{fleet.api}/static/vendor/uplot/LICENSE") == 200
    assert http_status(f"{fleet.api}/static/../routes.py") == 404
    req = urllib.request.Request(f"{fleet.api}/sign-in")
    with urllib.request.urlopen(req, timeout=10) as resp:
        csp = resp.headers["Content-Security-Policy"]
        html = resp.read().decode()
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "http://" not in html.replace(fleet.api, "") and "https://" not in html


class ElsewherePage:
    """A plain page served from 127.0.0.1 on a port of its own: another origin on the same
    loopback host, as a malicious or compromised local web app would be."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"<!doctype html><title>elsewhere</title>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@_browser
def test_a_page_of_another_site_cannot_acknowledge_with_the_operators_cookie(visit, fleet):
    """A page on another port of 127.0.0.1 is the same site: the browser sends the cookie
    with its request (SameSite does not stop it), and the service refuses it (another
    Origin, no CSRF value)."""
    open_alert = fleet.get("/api/v1/alerts?acknowledged=false&limit=1")["items"][0]
    visit.sign_in(TOKEN, "/alerts")
    elsewhere = ElsewherePage()
    try:
        visit.allowed.append(elsewhere.url)
        visit.page.goto(f"{elsewhere.url}/")
        with visit.page.expect_response(lambda r: r.url.endswith("/acknowledge")) as answer:
            visit.page.evaluate(
                """async (url) => { await fetch(url, {method: 'POST', mode: 'no-cors',
                     credentials: 'include', headers: {'Content-Type': 'text/plain'},
                     body: JSON.stringify({by: 'attacker'})}); }""",
                f"{fleet.api}/api/v1/alerts/{open_alert['id']}/acknowledge")
        refused = answer.value.status
    finally:
        elsewhere.close()
    # 403, not 401: the cookie went with the request (the service answers a request with no
    # credentials at all with 401) and was refused for its origin
    assert refused == 403
    stored = fleet.get(f"/api/v1/alerts?after_id={open_alert['id'] - 1}&limit=1")["items"][0]
    assert stored["acknowledged_by"] is None
