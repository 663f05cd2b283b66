"""Readings from an OPC UA server (asyncua): by subscription or by polling.

Either way the agent needs one reading per asset per `interval` with every feature in it, while
OPC UA delivers one node at a time. `LatestValues` (pure) keeps the last value of every node
and yields an asset's reading once each of its features has a value; the subscription fills it
as the server pushes changes, polling fills it by reading every node each interval. On a lost
connection the values are forgotten, so a reading is never built from values of before the
outage. Failures (refused connection, timeout, an unknown node, a lost session) are counted by
reason, logged at ERROR on the first and then once a minute, and retried with a doubling
backoff; a value that is not a number reaches the reading checker, which refuses and counts it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from edge_agent.config import OpcUaSource
from edge_agent.health import Backoff, OutageLog
from edge_agent.readings import Reading
from edge_agent.sources import Emit

log = logging.getLogger(__name__)


class LatestValues:
    """The last value of every node, and the readings they complete (pure)."""

    def __init__(self, assets: dict[str, dict[str, str]]) -> None:
        self.assets = assets  # asset -> feature -> node id
        self.users: dict[str, list[tuple[str, str]]] = {}  # node id -> [(asset, feature)]
        for asset, nodes in assets.items():
            for feature, node in nodes.items():
                self.users.setdefault(node, []).append((asset, feature))
        self.values: dict[str, dict[str, object]] = {a: {} for a in assets}

    @property
    def node_ids(self) -> list[str]:
        return list(self.users)

    def update(self, node_id: str, value: object) -> None:
        for asset, feature in self.users.get(node_id, ()):
            self.values[asset][feature] = value

    def complete(self) -> dict[str, dict[str, object]]:
        """Asset -> values, for the assets every feature of which has a value."""
        return {a: dict(v) for a, v in self.values.items() if len(v) == len(self.assets[a])}

    def forget(self) -> None:
        for v in self.values.values():
            v.clear()


class OpcUaFailure(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class OpcUaReader(threading.Thread):
    """Reads one OPC UA server for every asset of a source; never raises out of `run`."""

    def __init__(self, name: str, cfg: OpcUaSource, emit: Emit, stop: threading.Event,
                 failed: Callable[[str, str], None] = lambda reason, detail: None,
                 up: Callable[[bool], None] = lambda ok: None) -> None:
        super().__init__(name=name, daemon=True)
        self.cfg, self.emit, self.stop_event = cfg, emit, stop
        self.failed, self.up = failed, up
        self.latest = LatestValues({a.asset: dict(a.nodes) for a in cfg.assets})
        self.outage = OutageLog(log, f"OPC UA server {cfg.url} ({name})", down="failing",
                                up="working again")
        self.backoff = Backoff(0.5, cfg.max_backoff)
        self.emitted = 0
        self._last_time: dict[str, float] = {}
        self._bad_nodes: set[str] = set()
        # asyncua logs every failed attempt at length; the outage log reports them instead.
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        while not self.stop_event.is_set():
            try:
                await self._session()
            except OpcUaFailure as exc:
                self._fail(exc.reason, str(exc))
            except Exception as exc:  # a source must outlive anything a session does
                reason, detail = classify(exc)
                self._fail(reason, detail)
            self.latest.forget()
            if not self.stop_event.is_set():
                await self._sleep(self.backoff.next())

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    async def _session(self) -> None:
        client = await connect(self.cfg)
        try:
            nodes = [client.get_node(n) for n in self.latest.node_ids]
            if self.cfg.mode == "subscription":
                ids = {node.nodeid: n for node, n in zip(nodes, self.latest.node_ids,
                                                         strict=True)}
                sub = await asyncio.wait_for(client.create_subscription(
                    self.cfg.interval * 1000, _Handler(self.latest, ids)), self.cfg.timeout)
                await asyncio.wait_for(sub.subscribe_data_change(nodes), self.cfg.timeout)
            first = True
            while not self.stop_event.is_set():
                started = time.monotonic()
                if self.cfg.mode == "polling":
                    await self._poll(client, nodes)
                else:
                    await asyncio.wait_for(client.check_connection(), self.cfg.timeout)
                if first:
                    first = False
                    self.backoff.reset()
                    self.outage.recovered()
                    self.up(True)
                self._emit_complete()
                await self._sleep(self.cfg.interval - (time.monotonic() - started))
        finally:
            try:
                await asyncio.wait_for(client.disconnect(), 2)
            except Exception:  # the server may be gone already
                log.debug("OPC UA disconnect failed", exc_info=True)

    async def _poll(self, client, nodes: list) -> None:
        """Read every node once; a node the server answers with a bad status (unknown node,
        no access, sensor failure) is counted and leaves its asset without a reading."""
        from asyncua import ua

        results = await asyncio.wait_for(
            client.read_attributes(nodes, attr=ua.AttributeIds.Value), self.cfg.timeout)
        for node_id, result in zip(self.latest.node_ids, results, strict=True):
            status = result.StatusCode
            if status is not None and not status.is_good():
                self.failed("status", f"{node_id}: {status.name}")
                if node_id not in self._bad_nodes:
                    self._bad_nodes.add(node_id)
                    log.warning("OPC UA node %s of %s: %s", node_id, self.cfg.url, status.name)
                continue
            self.latest.update(node_id, result.Value.Value if result.Value else None)

    def _emit_complete(self) -> None:
        for asset, values in self.latest.complete().items():
            now = time.time()
            last = self._last_time.get(asset, 0.0)
            now = now if now > last else last + 1e-6
            self._last_time[asset] = now
            self.emit(Reading(asset, now, values, time.perf_counter()))
            self.emitted += 1

    def _fail(self, reason: str, detail: str) -> None:
        self.failed(reason, detail)
        self.up(False)
        self.outage.failed(f"{reason}: {detail}")


class _Handler:
    """asyncua's subscription callback: values go into the shared LatestValues."""

    def __init__(self, latest: LatestValues, ids: dict) -> None:
        self.latest, self.ids = latest, ids  # NodeId -> the node id as configured

    def datachange_notification(self, node, value, data) -> None:
        self.latest.update(self.ids.get(node.nodeid, ""), value)


def classify(exc: BaseException) -> tuple[str, str]:
    """(metric reason, detail) of an exception from asyncua or the network."""
    from asyncua import ua

    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout", "no answer in time"
    if isinstance(exc, ua.UaStatusCodeError):
        return "status", f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ua.UaError) and "No matching endpoints" in str(exc):
        # asyncua's only sign that the server offers no endpoint with our security policy
        return "security", f"the server offers no endpoint with this security policy ({exc})"
    if isinstance(exc, OSError):
        return "connect", exc.strerror or str(exc) or type(exc).__name__
    return "error", f"{type(exc).__name__}: {exc}"


async def connect(cfg: OpcUaSource):
    """A connected asyncua Client with the configured security and user."""
    from asyncua import Client, ua
    from asyncua.crypto import security_policies

    client = Client(cfg.url, timeout=cfg.timeout)
    if cfg.security_policy != "None":
        policy = getattr(security_policies,
                         "SecurityPolicy" + cfg.security_policy.replace("_", ""))
        await client.set_security(
            policy, certificate=str(cfg.certificate), private_key=str(cfg.private_key),
            server_certificate=str(cfg.server_certificate) if cfg.server_certificate else None,
            mode=ua.MessageSecurityMode[cfg.security_mode])
    if cfg.username:
        client.set_user(cfg.username)
        if cfg.password:
            client.set_password(cfg.password.get_secret_value())
    await asyncio.wait_for(client.connect(), cfg.timeout * 2)
    return client


def check_connection(cfg: OpcUaSource) -> str | None:
    """None when every node of the source can be read, else why not."""
    async def check() -> str | None:
        try:
            client = await connect(cfg)
        except Exception as exc:
            return "{}: {}".format(*classify(exc))
        try:
            from asyncua import ua

            ids = [n for a in cfg.assets for n in a.nodes.values()]
            results = await asyncio.wait_for(client.read_attributes(
                [client.get_node(n) for n in ids], attr=ua.AttributeIds.Value), cfg.timeout)
            bad = [f"{n}: {r.StatusCode.name}" for n, r in zip(ids, results, strict=True)
                   if r.StatusCode is not None and not r.StatusCode.is_good()]
            return "; ".join(bad) or None
        except Exception as exc:
            return "{}: {}".format(*classify(exc))
        finally:
            try:
                await asyncio.wait_for(client.disconnect(), 2)
            except Exception:
                log.debug("OPC UA disconnect failed", exc_info=True)

    return asyncio.run(check())
