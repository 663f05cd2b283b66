"""The topics each party uses, derived from the code, against contract/topics.py's table; the
broker ACL and the AWS IoT policy against that table.

The AWS IoT policy is checked by a small evaluator of its Allow statements with AWS IoT's
rules: a `topic/` ARN names a topic (Publish, RetainPublish, Receive), a `topicfilter/` ARN a
subscription filter (Subscribe), in which MQTT's `+` and `#` are plain characters; in a
policy resource `*` matches any run of characters (slashes included) and `?` one; the policy
variable `${iot:Connection.Thing.ThingName}` is the thing the certificate is attached to."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from contract import topics
from tests.conftest import REPO

pytestmark = pytest.mark.security

POLICY = REPO / "deploy" / "aws" / "iot-policy.json"
ACL = REPO / "deploy" / "docker" / "mosquitto" / "acl"
THING_VAR = "${iot:Connection.Thing.ThingName}"
ARN = "arn:aws:iot:eu-west-1:123456789012"


# --- what the code uses -------------------------------------------------------------------------

def _kind(call: ast.Call) -> str | None:
    """The topic kind a `topics.<fn>(...)` call names, or None for parse/shared."""
    fn = call.func.attr  # type: ignore[attr-defined]
    if fn in ("parse", "shared"):
        return None
    if fn == "subscription":
        assert isinstance(call.args[0], ast.Constant), ast.unparse(call)
        return call.args[0].value
    kind = fn.replace("_", "-")
    assert kind in topics.GATEWAY_KINDS + topics.ASSET_KINDS, ast.unparse(call)
    return kind


def topic_uses(package: str, skip: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """{"publish" | "retain" | "subscribe": kinds} for every topic the package's code builds:
    the first argument of a publish/subscribe call, a last will, or a subscription filter.
    A topic built anywhere else fails the test, so a new code path cannot slip past it."""
    uses: dict[str, set[str]] = {"publish": set(), "retain": set(), "subscribe": set()}
    for path in sorted((REPO / package).rglob("*.py")):
        if path.name in skip:
            continue
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "topics"):
                continue
            kind = _kind(node)
            if kind is None:
                continue
            parent = parents[node]
            where = f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}"
            if (isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute)
                    and parent.args and parent.args[0] is node):
                verb = parent.func.attr
                if verb == "publish":
                    uses["publish"].add(kind)
                    retain = [k.value for k in parent.keywords if k.arg == "retain"]
                    if retain and isinstance(retain[0], ast.Constant) and retain[0].value:
                        uses["retain"].add(kind)
                    continue
                if verb == "subscribe" or node.func.attr == "subscription":
                    uses["subscribe"].add(kind)
                    continue
            if node.func.attr == "subscription":  # a filter kept for a later subscribe
                uses["subscribe"].add(kind)
                continue
            grand = parents.get(parent)
            if (isinstance(parent, ast.Tuple) and isinstance(grand, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "will" for t in grand.targets)):
                uses["publish"].add(kind)  # a last will, set with retain=True (transport.py)
                uses["retain"].add(kind)
                continue
            raise AssertionError(f"a topic used in a way this test does not know: {where}")
    return uses


def test_the_agent_uses_exactly_the_gateway_topics_of_the_contract():
    # viewer.py is an operator's tool run with its own identity, not the agent.
    uses = topic_uses("edge_agent", skip=("viewer.py",))
    assert uses["publish"] == set(topics.GATEWAY_PUBLISHES)
    assert uses["retain"] == set(topics.GATEWAY_RETAINS)
    assert uses["subscribe"] == set(topics.GATEWAY_SUBSCRIBES)
    wills = [line for line in (REPO / "edge_agent" / "transport.py").read_text().splitlines()
             if "will_set(" in line]
    assert wills and all("retain=True" in line for line in wills)


def test_the_viewer_reads_exactly_the_viewer_topics_and_writes_nothing():
    uses = topic_uses("edge_agent", skip=tuple(
        p.name for p in (REPO / "edge_agent").rglob("*.py") if p.name != "viewer.py"))
    assert uses == {"publish": set(), "retain": set(),
                    "subscribe": set(topics.VIEWER_SUBSCRIBES)}
    # verdicts are the agent's business; the viewer shows state changes
    assert "verdict" not in topics.VIEWER_SUBSCRIBES


def test_the_cloud_uses_exactly_the_cloud_topics_of_the_contract():
    uses = topic_uses("cloud_service")
    assert uses["publish"] == set(topics.CLOUD_PUBLISHES)
    assert uses["subscribe"] == set(topics.CLOUD_SUBSCRIBES)


# --- the broker ACL ------------------------------------------------------------------------------

def read_acl(path: Path) -> dict[str, set[tuple[str, str]]]:
    """{"": anonymous grants, "<user>": user grants, "%pattern": pattern grants}, each a set of
    (access, topic)."""
    blocks: dict[str, set[tuple[str, str]]] = {"": set(), "%pattern": set()}
    user = ""
    for raw in path.read_text().splitlines():
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user":
            user = words[1]
            blocks.setdefault(user, set())
        elif words[0] in ("topic", "pattern"):
            access, topic = (words[1], words[2]) if len(words) == 3 else ("readwrite", words[1])
            accesses = ("read", "write") if access == "readwrite" else (access,)
            target = "%pattern" if words[0] == "pattern" else user
            blocks[target] |= {(a, topic) for a in accesses}
        else:
            raise AssertionError(f"unexpected ACL line: {raw}")
    return blocks


def filter_for(kind: str, gateway: str) -> str:
    return topics.subscription(kind, gateway)


def test_the_acl_grants_each_party_exactly_its_topics():
    acl = read_acl(ACL)
    assert acl.pop("") == set(), "anonymous clients must get nothing"
    gateway_write = set(topics.GATEWAY_PUBLISHES) | set(topics.PLANT_KINDS)
    gateway_read = (set(topics.GATEWAY_SUBSCRIBES) | set(topics.PLANT_KINDS)
                    | set(topics.VIEWER_SUBSCRIBES))
    # a gateway's identity never writes what the cloud says
    assert not gateway_write & set(topics.CLOUD_PUBLISHES)
    assert acl.pop("%pattern") == (
        {("write", filter_for(k, "%u")) for k in gateway_write}
        | {("read", filter_for(k, "%u")) for k in gateway_read})
    assert acl == {"pdm-cloud": {("read", filter_for(k, "+")) for k in topics.CLOUD_SUBSCRIBES}
                   | {("write", filter_for(k, "+")) for k in topics.CLOUD_PUBLISHES}}


def test_the_kubernetes_broker_config_is_the_shipped_one():
    import yaml

    data = yaml.safe_load((REPO / "deploy" / "k8s" / "mosquitto-config.yaml").read_text())["data"]
    assert data["mosquitto.conf"] == (ACL.parent / "mosquitto.conf").read_text()
    assert data["acl"] == ACL.read_text()


# --- the AWS IoT policy --------------------------------------------------------------------------

def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _resource_matches(pattern: str, resource: str) -> bool:
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.fullmatch(regex, resource) is not None


def allowed(policy: dict, action: str, resource: str, thing: str, attached: bool = True) -> bool:
    """Whether any Allow statement grants `action` on `resource` to a connection of `thing`."""
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow", "this evaluator knows Allow statements only"
        condition = statement.get("Condition", {})
        assert set(condition) <= {"Bool"}, f"unknown condition {condition}"
        ok = all(str(value).lower() == str(attached).lower()
                 for key, value in condition.get("Bool", {}).items()
                 if key == "iot:Connection.Thing.IsAttached")
        assert set(condition.get("Bool", {})) <= {"iot:Connection.Thing.IsAttached"}
        if not ok:
            continue
        actions = _as_list(statement["Action"])
        if not any(_resource_matches(a, action) for a in actions):
            continue
        for res in _as_list(statement["Resource"]):
            res = res.replace("arn:aws:iot:REGION:ACCOUNT", ARN).replace(THING_VAR, thing)
            if _resource_matches(res, resource):
                return True
    return False


def topic_arn(topic: str) -> str:
    return f"{ARN}:topic/{topic}"


def filter_arn(topic_filter: str) -> str:
    return f"{ARN}:topicfilter/{topic_filter}"


def concrete(kind: str, gateway: str, asset: str = "engine-1") -> str:
    if kind in topics.GATEWAY_KINDS:
        return topics.gateway_topic(gateway, kind)
    return topics.asset_topic(gateway, asset, kind)


def needed(thing: str) -> set[tuple[str, str]]:
    """What a gateway's agent does on AWS IoT (its client id is the thing name)."""
    out = {("iot:Connect", f"{ARN}:client/{thing}")}
    for kind in topics.GATEWAY_PUBLISHES:
        out.add(("iot:Publish", topic_arn(concrete(kind, thing))))
    for kind in topics.GATEWAY_RETAINS:
        out.add(("iot:RetainPublish", topic_arn(concrete(kind, thing))))
    for kind in topics.GATEWAY_SUBSCRIBES:
        out.add(("iot:Subscribe", filter_arn(topics.subscription(kind, thing))))
        out.add(("iot:Receive", topic_arn(concrete(kind, thing))))
    return out


def universe(things: tuple[str, ...]) -> set[tuple[str, str]]:
    """Every request a client could make about our topics, for these things."""
    kinds = topics.GATEWAY_KINDS + topics.ASSET_KINDS
    out: set[tuple[str, str]] = set()
    for thing in things:
        for client_id in (thing, f"{thing}-uplink", f"{thing}-local", f"{thing}x"):
            out.add(("iot:Connect", f"{ARN}:client/{client_id}"))
        for kind in kinds:
            topic = concrete(kind, thing)
            for action in ("iot:Publish", "iot:RetainPublish", "iot:Receive"):
                out.add((action, topic_arn(topic)))
            for topic_filter in (topic, topics.subscription(kind, thing),
                                 topics.subscription(kind, "+"), f"pdm/v1/{thing}/#"):
                out.add(("iot:Subscribe", filter_arn(topic_filter)))
    for topic_filter in ("#", "pdm/#", "pdm/v1/#", "pdm/v1/+/#", "pdm/v1/+/+/#"):
        out.add(("iot:Subscribe", filter_arn(topic_filter)))
    return out


def test_the_aws_iot_policy_grants_a_thing_exactly_what_its_agent_needs():
    policy = json.loads(POLICY.read_text())
    requests = universe(("gw-a", "gw-b", "gw-a-2"))
    granted = {r for r in requests if allowed(policy, *r, thing="gw-a")}
    assert needed("gw-a") <= requests
    missing = needed("gw-a") - granted
    assert not missing, f"the agent needs these and the policy refuses them: {sorted(missing)}"
    extra = granted - needed("gw-a")
    assert not extra, f"the policy grants more than the agent needs: {sorted(extra)}"
    # Nothing about another thing, even one whose name starts with this one's.
    assert not [r for r in granted if "gw-b" in r[1] or "gw-a-2" in r[1]]
    # A certificate not attached to the thing connects to nothing.
    assert not allowed(policy, "iot:Connect", f"{ARN}:client/gw-a", "gw-a", attached=False)


def test_the_aws_iot_doc_shows_the_shipped_policy():
    text = (REPO / "docs" / "aws-iot.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)
              if '"Statement"' in b]
    assert blocks == [json.loads(POLICY.read_text())]
