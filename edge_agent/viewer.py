"""A live table of asset states for a person, from the retained states and the alert stream.

It counts every asset it has seen: one named only by an alert event (a cloud alert about an
asset whose retained state this broker does not hold, say) is listed from that event."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from rich.live import Live
from rich.table import Table

from contract import codec, topics
from contract.errors import ContractError
from contract.payloads import AlertEvent, AlertState, AssetState


class ViewerError(Exception):
    """The viewer cannot run (the broker cannot be reached); the message says why."""


COLOURS = {"NORMAL": "green", "WARNING": "yellow", "CRITICAL": "bold red"}


@dataclass(frozen=True)
class BoardRow:
    """One asset as the board shows it: from its retained edge state when there is one, else
    from the latest alert event about it (an asset only the cloud has spoken of)."""

    gateway: str
    asset: str
    state: AlertState
    probability: float
    rul: float | None
    seq: int
    model_version: str
    seen_in: str  # "state", "alert" (the edge's) or "cloud-alert"


class AlertBoard:
    """Every asset seen (in a retained state or an alert event) and the last few alert events
    (pure)."""

    def __init__(self, history: int = 10) -> None:
        self.states: dict[tuple[str, str], AssetState] = {}
        self.latest: dict[tuple[str, str], tuple[str, AlertEvent]] = {}  # by asset: kind, event
        self.events: list[AlertEvent] = []
        self.history = history

    def feed(self, topic: str, payload: bytes) -> None:
        kind = topics.parse(topic).kind
        if kind == "state":
            s = codec.decode_json(payload, AssetState)
            self.states[(s.gateway, s.asset)] = s
        elif kind in ("alert", "cloud-alert"):
            event = codec.decode_json(payload, AlertEvent)
            self.latest[(event.gateway, event.asset)] = (kind, event)
            self.events = [*self.events, event][-self.history:]

    @property
    def assets(self) -> set[tuple[str, str]]:
        """(gateway, asset) of every asset seen, whichever message named it."""
        return set(self.states) | set(self.latest)

    def rows(self) -> list[BoardRow]:
        """One row per asset seen, the most urgent first."""
        out = []
        for key in self.assets:
            s = self.states.get(key)
            if s is not None:
                out.append(BoardRow(s.gateway, s.asset, s.state, s.probability, s.rul, s.seq,
                                    s.model_version, "state"))
                continue
            kind, e = self.latest[key]
            out.append(BoardRow(e.gateway, e.asset, e.new_state, e.probability, e.rul, e.seq,
                                e.model_version, kind))
        return sorted(out, key=lambda r: (-r.state.level, r.gateway, r.asset))

    def table(self) -> Table:
        t = Table(title=f"Asset states ({len(self.assets)} assets)  {time.strftime('%X')}")
        for col in ("gateway", "asset", "state", "probability", "RUL", "seq", "model", "from"):
            t.add_column(col)
        for r in self.rows():
            t.add_row(r.gateway, r.asset, f"[{COLOURS[r.state.value]}]{r.state.value}[/]",
                      f"{r.probability:.3f}", f"{r.rul:.0f}" if r.rul is not None else "-",
                      str(r.seq), r.model_version, r.seen_in)
        if self.events:
            t.caption = "latest: " + "; ".join(
                f"{e.source} {e.asset} {e.old_state.value}->{e.new_state.value}"
                for e in self.events[-3:])
        return t


def watch(host: str, port: int, gateway: str = "+", seconds: float | None = None,
          tls: tuple[str | None, str | None, str | None] | None = None,
          board: AlertBoard | None = None) -> AlertBoard:
    """`tls`: (CA file, client certificate, key) for a broker that requires them; with the
    shipped ACL a gateway's certificate shows that gateway's assets only. `board`: fill this
    one (another thread may read it meanwhile), else a new one."""
    board = board if board is not None else AlertBoard()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if tls is not None:
        client.tls_set(ca_certs=tls[0], certfile=tls[1], keyfile=tls[2])

    def on_connect(c, userdata, flags, rc, props):
        # Spelled out (not looped over VIEWER_SUBSCRIBES): the policy test reads the kinds here.
        for topic_filter in (topics.subscription("state", gateway),
                             topics.subscription("alert", gateway),
                             topics.subscription("cloud-alert", gateway)):
            c.subscribe(topic_filter, qos=1)

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
