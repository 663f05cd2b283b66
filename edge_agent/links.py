"""`check-config --connect`: try every link a config names, once, and say what failed.

Each link is tried as the agent would use it (the same transport with the same TLS files, the
same Modbus reads, the same OPC UA security), so a wrong port, certificate or register map shows
before the agent is installed rather than as a silent gateway.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from edge_agent.config import AgentConfig, BrokerConfig, ModbusSource, OpcUaSource


def check_broker(cfg: BrokerConfig, client_id: str, role: str, timeout: float) -> str | None:
    """None once connected within `timeout`, else the last failure reported."""
    import logging

    from edge_agent.transport import make_transport

    transport = make_transport(cfg, client_id, role=role)
    # The verdict is printed by the caller; the transport's own ERROR lines would repeat it.
    transport.outage.log = logging.getLogger("edge_agent.links.quiet")
    transport.outage.log.disabled = True
    transport.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if transport.connected.wait(0.05):
                return None
            if transport.outage.failures:  # the first refusal is the answer
                return transport.outage.last_reason
        return transport.outage.last_reason or f"no connection within {timeout:g} s"
    finally:
        transport.stop()


def check_links(cfg: AgentConfig, timeout: float) -> Iterator[tuple[str, str | None]]:
    """(link, None when it works, else why not) for every broker and industrial source."""
    brokers = [("broker", cfg.broker)]
    if cfg.uplink is not None and cfg.uplink != cfg.broker:
        brokers.append(("uplink", cfg.uplink))
    for role, broker in brokers:
        link = f"{role} {broker.host}:{broker.port}"
        try:
            yield link, check_broker(broker, f"{cfg.gateway_id}-check-{role}", role, timeout)
        except (OSError, ValueError) as exc:  # unreadable TLS files, ...
            yield link, str(exc)
    for i, src in enumerate(cfg.sources):
        if isinstance(src, ModbusSource):
            from edge_agent.sources import modbus

            quick_modbus = src.model_copy(update={"timeout": min(src.timeout, timeout)})
            yield f"modbus-{i} {src.host}:{src.port}", modbus.check_connection(quick_modbus)
        elif isinstance(src, OpcUaSource):
            from edge_agent.sources import opcua

            quick_opcua = src.model_copy(update={"timeout": min(src.timeout, timeout)})
            yield f"opcua-{i} {src.url}", opcua.check_connection(quick_opcua)
