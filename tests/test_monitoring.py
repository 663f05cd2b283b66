"""deploy/monitoring holds together: every metric the Grafana dashboard and the Prometheus
alert rules name is one the cloud service or the edge agent really exports (read from their
/metrics pages while both run against a real broker), the rules and the scrape config pass
promtool where it is installed, Grafana's provisioning finds the dashboard and its datasource,
and the compose profile "monitoring" starts Prometheus and Grafana with those files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY
from tests.support.broker import free_port
from tests.support.receiver import WebhookReceiver
from tests.test_deploy import compose

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "deploy" / "monitoring"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
PROVISIONING = MONITORING / "grafana" / "provisioning"
# Series Prometheus makes itself for every scrape target, not exported by the services.
PROMETHEUS_OWN = {"up"}
# PromQL words that look like identifiers but are no metric.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                              "_created"),
            "summary": ("_count", "_sum", "_created"), "gauge": ("",), "info": ("_info",)}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label
    matchers, ranges, label lists of by/without/on/ignoring/group_*, function calls' names and
    numbers are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, subqueries, $__rate_interval
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def exported_names(page: str) -> set[str]:
    """Every series name a /metrics page can carry: the samples present, and each declared
    family with its type's suffixes (a labelled family without children shows only its TYPE
    line)."""
    names = set()
    for line in page.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            base = family.removesuffix("_total") if kind == "counter" else family
            names |= {base + s for s in SUFFIXES.get(kind, ("",))}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def dashboard_expressions() -> list[tuple[str, str]]:
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.name}: {panel['title']}", target["expr"]))
    return out


def rule_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"]
            for rule in group["rules"]]


def test_the_metric_name_parser():
    assert metric_names('sum by (le, instance) (rate(pdm_edge_inference_seconds_bucket'
                        '{job="pdm-edge", le=~"0.1|1"}[$__rate_interval])) > 0.002') == {
        "pdm_edge_inference_seconds_bucket"}
    assert metric_names('count(up{job="x"} == 1) > max(pdm_cloud_replicas_live) and on() '
                        'absent(foo:bar) unless ignoring(a) baz offset 5m') == {
        "up", "pdm_cloud_replicas_live", "foo:bar", "baz"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (x_bucket)) * 1e3") == {"x_bucket"}
    page = ("# HELP a_total x\n# TYPE a_total counter\n# TYPE h histogram\n"
            'g{l="1"} 2.0\n# TYPE g gauge\n')
    assert exported_names(page) == {"a_total", "a_created", "h_bucket", "h_count", "h_sum",
                                    "h_created", "g"}


def test_dashboard_and_rules_name_only_metrics_the_services_export(tmp_path, broker, data_dir):
    from tests.test_cloud_service import Running, cloud_config
    from tests.test_edge_agent import start_agent, write_config

    receiver = WebhookReceiver().start()
    cloud = Running(cloud_config(tmp_path, broker, DEFAULT_BUNDLE, DEFAULT_BUNDLE_KEY,
                                 notifications={"webhooks": [{"name": "ops",
                                                              "url": receiver.url}]}))
    port = free_port()
    agent = start_agent(write_config(tmp_path, broker, data_dir, units=[1], rate=20,
                                     extra={"metrics_port": port}))
    try:
        edge_page = ""
        deadline = time.monotonic() + 60
        while "pdm_edge_windows_scored_total" not in edge_page:
            assert agent.poll() is None, "the agent stopped"
            assert time.monotonic() < deadline, "the agent's /metrics did not answer"
            try:
                edge_page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                                   timeout=5).read().decode()
            except OSError:
                time.sleep(0.2)
        cloud_page = cloud.http.get("/metrics").text
    finally:
        agent.terminate()
        agent.wait(30)
        cloud.close()
        receiver.stop()
    cloud_names, edge_names = exported_names(cloud_page), exported_names(edge_page)
    assert "pdm_cloud_webhook_deliveries_total" in cloud_names
    assert "pdm_edge_inference_seconds_bucket" in edge_names
    known = cloud_names | edge_names | PROMETHEUS_OWN
    unknown = [(where, name) for where, expr in dashboard_expressions() + rule_expressions()
               for name in sorted(metric_names(expr) - known)]
    assert not unknown, f"metrics no service exports: {unknown}"
    # each service's part: the cloud's names come from the cloud, the edge's from the edge
    used = set().union(*(metric_names(e) for _, e in dashboard_expressions()
                         + rule_expressions()))
    assert {n for n in used if n.startswith("pdm_cloud_")} <= cloud_names
    assert {n for n in used if n.startswith("pdm_edge_")} <= edge_names


def test_the_dashboard_covers_what_operators_watch():
    (path,) = DASHBOARDS.glob("*.json")
    dashboard = json.loads(path.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    used = {name for _, e in dashboard_expressions() for name in metric_names(e)}
    for needed in ("pdm_cloud_assets_by_state", "pdm_cloud_windows_scored_total",
                   "pdm_cloud_ticks_received_total", "pdm_cloud_dead_letters_total",
                   "pdm_cloud_store_errors_total", "pdm_edge_inference_seconds_bucket",
                   "pdm_edge_outbox_depth", "pdm_cloud_webhook_deliveries_total",
                   "pdm_cloud_webhook_queue_depth", "pdm_cloud_assets_drifting",
                   "pdm_cloud_drift_psi"):
        assert needed in used, needed
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == source["uid"], panel["title"]
        x, w = panel["gridPos"]["x"], panel["gridPos"]["w"]
        assert x >= 0 and x + w <= 24, panel["title"]


def test_the_rules_alert_on_what_breaks():
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    by_name = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    for needed in ("PdmCloudBrokerDisconnected", "PdmEdgeBrokerDown", "PdmCloudStoreDown",
                   "PdmDeadLettersRising", "PdmEdgeOutboxGrowing", "PdmWebhookFailing",
                   "PdmCloudReplicaMissing", "PdmCloudReplicaDown", "PdmInputDrift"):
        assert needed in by_name, needed
    for name, rule in by_name.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_the_rules_and_the_scrape_config_and_the_rules_fire(tmp_path):
    rules = subprocess.run(["promtool", "check", "rules", str(MONITORING / "alerts.yml")],
                           capture_output=True, text=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    # the config names the rules by their path in the container: check a copy beside them
    config = (MONITORING / "prometheus.yml").read_text().replace("/etc/prometheus/", "")
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(MONITORING / "alerts.yml", tmp_path / "alerts.yml")
    checked = subprocess.run(["promtool", "check", "config", "prometheus.yml"], cwd=tmp_path,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # the rules fire (and stay quiet) as alerts_test.yml expects on made-up series
    tested = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=MONITORING,
                            capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_compose_profile_monitoring_starts_prometheus_and_grafana_with_these_files():
    services = compose("compose.yaml")["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["image"].startswith("prom/prometheus:")
    assert grafana["image"].startswith("grafana/grafana:")
    for name, service in services.items():  # only these two are in the profile
        assert ("monitoring" in service.get("profiles", [])) == (name in ("prometheus",
                                                                          "grafana")), name
    compose_dir = REPO / "deploy" / "docker"
    mounts = {}
    for service in (prometheus, grafana):
        for volume in service["volumes"]:
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (compose_dir / source).exists(), volume
                mounts[target] = (compose_dir / source).resolve()
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert mounts["/etc/prometheus/prometheus.yml"] == MONITORING / "prometheus.yml"
    for rule_file in config["rule_files"]:
        assert mounts[rule_file] == MONITORING / "alerts.yml"
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "pdm.yml").read_text())
    assert mounts[provider["providers"][0]["options"]["path"]] == DASHBOARDS
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    scraped = {c["job_name"]: c for c in config["scrape_configs"]}
    assert scraped["pdm-cloud"]["dns_sd_configs"][0]["names"] == ["cloud"]  # every replica
    assert scraped["pdm-cloud"]["dns_sd_configs"][0]["port"] == 8000
    assert scraped["pdm-edge"]["static_configs"][0]["targets"] == ["edge:9108"]
    for service in (prometheus, grafana):  # the host's loopback only
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"])
