"""A live table of asset states for a person, from the retained states and the alert stream."""

from __future__ import annotations

import contextlib
import time

import paho.mqtt.client as mqtt
from rich.live import Live
from rich.table import Table

from contract import codec, topics
from contract.errors import ContractError
from contract.payloads import AlertEvent, AssetState


class ViewerError(Exception):
    """The viewer cannot run (the broker cannot be reached); the message says why."""


COLOURS = {"NORMAL": "green", "WARNING": "yellow", "CRITICAL": "bold red"}


class AlertBoard:
    """The latest state of every asset and the last few alert events (pure)."""

    def __init__(self, history: int = 10) -> None:
        self.states: dict[tuple[str, str], AssetState] = {}
        self.events: list[AlertEvent] = []
        self.history = history

    def feed(self, topic: str, payload: bytes) -> None:
        kind = topics.parse(topic).kind
        if kind == "state":
            s = codec.decode_json(payload, AssetState)
            self.states[(s.gateway, s.asset)] = s
        elif kind in ("alert", "cloud-alert"):
            self.events = [*self.events, codec.decode_json(payload, AlertEvent)][-self.history:]

    def table(self) -> Table:
        t = Table(title=f"Asset states ({len(self.states)} assets)  {time.strftime('%X')}")
        for col in ("gateway", "asset", "state", "probability", "RUL", "seq", "model"):
            t.add_column(col)
        order = {"CRITICAL": 0, "WARNING": 1, "NORMAL": 2}
        for s in sorted(self.states.values(), key=lambda s: (order[s.state.value], s.asset)):
            t.add_row(s.gateway, s.asset, f"[{COLOURS[s.state.value]}]{s.state.value}[/]",
                      f"{s.probability:.3f}", f"{s.rul:.0f}" if s.rul is not None else "-",
                      str(s.seq), s.model_version)
        if self.events:
            t.caption = "latest: " + "; ".join(
                f"{e.source} {e.asset} {e.old_state.value}->{e.new_state.value}"
                for e in self.events[-3:])
        return t


def watch(host: str, port: int, gateway: str = "+", seconds: float | None = None,
          tls: tuple[str | None, str | None, str | None] | None = None) -> AlertBoard:
    """`tls`: (CA file, client certificate, key) for a broker that requires them; with the
    shipped ACL a gateway's certificate shows that gateway's assets only."""
    board = AlertBoard()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if tls is not None:
        client.tls_set(ca_certs=tls[0], certfile=tls[1], keyfile=tls[2])

    def on_connect(c, userdata, flags, rc, props):
        for kind in ("state", "alert", "cloud-alert"):
            c.subscribe(topics.subscription(kind, gateway), qos=1)

    def on_message(c, userdata, msg):
        with contextlib.suppress(ContractError):  # a viewer shows what it understands
            board.feed(msg.topic, msg.payload)

    client.on_connect, client.on_message = on_connect, on_message
    try:
        client.connect(host, port)
    except (OSError, ValueError) as exc:
        from edge_agent.transport import describe_os_error

        raise ViewerError(f"cannot connect to the broker at {host}:{port}: "
                          f"{describe_os_error(exc)}") from None
    client.loop_start()
    deadline = None if seconds is None else time.monotonic() + seconds
    try:
        with Live(board.table(), refresh_per_second=4) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.25)
                live.update(board.table())
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
    return board
