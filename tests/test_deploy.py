"""The deployment files hold together: compose scales the cloud, Kubernetes objects point at each
other, no file pins what must differ per replica. (tests/test_container.py runs them.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "deploy" / "docker"
K8S = REPO / "deploy" / "k8s"


class _ComposeLoader(yaml.SafeLoader):
    """Reads compose override tags (`!override`, `!reset`) as plain values."""


_ComposeLoader.add_multi_constructor(
    "!", lambda loader, suffix, node: (loader.construct_sequence(node)
                                       if isinstance(node, yaml.SequenceNode)
                                       else loader.construct_mapping(node)
                                       if isinstance(node, yaml.MappingNode)
                                       else loader.construct_scalar(node)))


def compose(name: str) -> dict:
    return yaml.load((DOCKER / name).read_text(), Loader=_ComposeLoader)  # noqa: S506


def k8s_objects() -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_compose_cloud_scales():
    """`--scale cloud=N` needs no fixed hostname or container name (one client id per replica)
    and no single fixed host port (N containers cannot all bind it)."""
    cloud = compose("compose.yaml")["services"]["cloud"]
    assert "hostname" not in cloud and "container_name" not in cloud
    for port in cloud.get("ports", []):
        host = str(port).rsplit(":", 1)[0]
        host_port = re.sub(r"^\$\{[A-Z_]+:-([^}]*)\}$", r"\1", host.split(":")[-1])
        assert host_port == "" or "-" in host_port, f"fixed host port {port!r} breaks scaling"
    assert "client_id" not in yaml.safe_load((DOCKER / "cloud.yaml").read_text())


def test_compose_cloud_uses_the_postgres_service():
    services = compose("compose.yaml")["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    env = services["cloud"]["environment"]
    url = env["PDM_CLOUD_STORE__URL"]
    assert url.startswith("postgresql://") and "@postgres:" in url
    assert ":" not in url.split("://", 1)[1].split("@", 1)[0], "password in the store URL"
    assert "PDM_DB_PASSWORD" in env["PDM_CLOUD_STORE__PASSWORD"]
    assert "PDM_DB_PASSWORD" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert "postgres" in services["cloud"]["depends_on"]


def test_compose_test_override_swaps_only_what_it_must():
    override = compose("compose.test.yaml")["services"]
    assert set(override) == {"postgres", "cloud"}
    assert override["postgres"] == {"image": "pdm-postgres-test:latest"}
    assert set(override["cloud"]) == {"ports"}
    assert (DOCKER / "Dockerfile.postgres-test").exists()


def test_k8s_kustomization_lists_every_manifest():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == present


def test_k8s_objects_point_at_each_other():
    objects = k8s_objects()
    cloud = objects[("StatefulSet", "pdm-cloud")]
    labels = cloud["spec"]["template"]["metadata"]["labels"]
    hpa = objects[("HorizontalPodAutoscaler", "pdm-cloud")]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", "pdm-cloud")
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = objects[("PodDisruptionBudget", "pdm-cloud")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = cloud["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    url = env["PDM_CLOUD_STORE__URL"]["value"]
    host = url.split("@", 1)[1].split(":", 1)[0]
    assert ("Service", host) in objects, f"no Service {host} for the store URL"
    assert env["PDM_CLOUD_STORE__PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "pdm-postgres"
    postgres = objects[("StatefulSet", "pdm-postgres")]["spec"]["template"]["spec"]
    pg_env = {e["name"]: e for e in postgres["containers"][0]["env"]}
    assert pg_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "pdm-postgres"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests are meant for


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml")
                                        if p.name != "kustomization.yaml"))
def test_k8s_manifests_match_the_api_schemas(path):
    """Strict: a misspelt or misplaced field fails, as `kubectl apply` would refuse it."""
    utils = pytest.importorskip("kubernetes_validate.utils",
                                reason="kubernetes-validate not installed (the dev extra)")
    for doc in yaml.safe_load_all((K8S / path).read_text()):
        try:
            utils.validate(doc, K8S_VERSION, strict=True)
        except utils.ValidationError as exc:
            pytest.fail(f"{path}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} "
                        f"at {'.'.join(map(str, exc.path))}")


@pytest.mark.parametrize("path", ["docs/cloud.md", "deploy/k8s/statefulset.yaml", "README.md"])
def test_no_share_of_the_fleet_caveat(path):
    """Replicas share the store now: no document may say a replica holds only its share."""
    text = (REPO / path).read_text().lower()
    assert "only its share" not in text and "not written yet" not in text
