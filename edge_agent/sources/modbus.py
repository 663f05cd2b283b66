"""Readings polled from a Modbus TCP server (a PLC, or a gateway to RTU devices).

The pure part plans the reads (features whose registers are next to each other are read in one
request, at most 125 registers) and decodes the registers into engineering values
(`raw * scale + offset`). The thread around it polls every asset's unit id once per
`poll_interval` with pymodbus' synchronous client. A read that fails never stops the source:
a refused connection, a timeout or an exception response is counted (by reason), logged at
ERROR on the first failure and then once a minute while it lasts, and the connection is retried
with a doubling backoff. A value that decodes to NaN or infinity is left in the reading for the
reading checker to refuse and count, as a bad value from any other source is.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.config import ModbusRegister, ModbusSource
from edge_agent.health import Backoff, OutageLog
from edge_agent.readings import Reading
from edge_agent.sources import Emit

log = logging.getLogger(__name__)
MAX_REGISTERS = 125  # per read request, by the Modbus specification

# data type -> (struct code, registers)
LAYOUT = {"int16": ("h", 1), "uint16": ("H", 1), "int32": ("i", 2), "uint32": ("I", 2),
          "float32": ("f", 2), "int64": ("q", 4), "uint64": ("Q", 4), "float64": ("d", 4)}


@dataclass(frozen=True)
class Field:
    feature: str
    at: int  # registers from the block's start
    data_type: str
    scale: float
    offset: float


@dataclass(frozen=True)
class Block:
    """One read request: `count` registers of one type from `address` on."""

    register: str
    address: int
    count: int
    fields: tuple[Field, ...]


def plan_blocks(registers: dict[str, ModbusRegister]) -> list[Block]:
    """The fewest read requests that cover every register, each at most MAX_REGISTERS long.
    Gaps between features are read too (a few unused registers cost less than a round trip);
    ValueError when two features overlap."""
    blocks: list[Block] = []
    for kind in ("holding", "input"):
        regs = sorted(((r.address, name, r) for name, r in registers.items()
                       if r.register_type == kind), key=lambda item: item[0])
        start, end = -1, -1  # end: one past the last register of the block
        fields: list[Field] = []
        for address, name, r in regs:
            size = LAYOUT[r.data_type][1]
            if address < end:
                raise ValueError(f"{kind} register {address} of {name} overlaps "
                                 f"{fields[-1].feature}")
            if fields and address + size - start > MAX_REGISTERS:
                blocks.append(Block(kind, start, end - start, tuple(fields)))
                fields = []
            if not fields:
                start = address
            fields.append(Field(name, address - start, r.data_type, r.scale, r.offset))
            end = address + size
        if fields:
            blocks.append(Block(kind, start, end - start, tuple(fields)))
    return blocks


def decode(data_type: str, words: list[int], word_order: str = "big") -> float:
    """One value from its registers (each register big-endian, as Modbus sends it)."""
    code, size = LAYOUT[data_type]
    if len(words) != size:
        raise ValueError(f"{data_type} needs {size} registers, got {len(words)}")
    ordered = words if word_order == "big" else list(reversed(words))
    return float(struct.unpack(">" + code, struct.pack(f">{size}H", *ordered))[0])


def encode(data_type: str, value: float, word_order: str = "big") -> list[int]:
    """The registers of one value (the inverse of `decode`; the simulator's side)."""
    code, size = LAYOUT[data_type]
    number = value if code in "fd" else int(round(value))
    words = list(struct.unpack(f">{size}H", struct.pack(">" + code, number)))
    return words if word_order == "big" else list(reversed(words))


def block_values(block: Block, words: list[int], word_order: str) -> dict[str, float]:
    """Engineering values of a block's features from the registers read."""
    values = {}
    for f in block.fields:
        size = LAYOUT[f.data_type][1]
        values[f.feature] = decode(f.data_type, words[f.at:f.at + size], word_order) * f.scale \
            + f.offset
    return values


class ModbusReadError(Exception):
    """A failed read; `reason` is the metric label (connect, timeout, exception, ...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class ModbusPoller(threading.Thread):
    """Polls every asset of one Modbus source; never raises out of `run`."""

    def __init__(self, name: str, cfg: ModbusSource, emit: Emit, stop: threading.Event,
                 failed: Callable[[str, str], None] = lambda reason, detail: None,
                 up: Callable[[bool], None] = lambda ok: None) -> None:
        super().__init__(name=name, daemon=True)
        self.cfg, self.emit, self.stop_event = cfg, emit, stop
        self.failed, self.up = failed, up
        self.blocks = plan_blocks(cfg.registers)
        # pymodbus logs every failed attempt; the outage log below reports them, rate-limited.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        self.outage = OutageLog(log, f"Modbus server {cfg.host}:{cfg.port} ({name})",
                                down="failing", up="working again")
        self.backoff = Backoff(0.5, cfg.max_backoff)
        self.emitted = 0
        self.polls = 0
        self._last_time: dict[str, float] = {}

    def _client(self):
        from pymodbus.client import ModbusTcpClient

        # retries=0: a lost poll is retried by the next one, not by piling up requests.
        return ModbusTcpClient(self.cfg.host, port=self.cfg.port, timeout=self.cfg.timeout,
                               retries=0, reconnect_delay=0)

    def read_asset(self, client, unit_id: int) -> dict[str, float]:
        """Every feature of one unit; ModbusReadError on any failed request."""
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        values: dict[str, float] = {}
        for block in self.blocks:
            read = (client.read_holding_registers if block.register == "holding"
                    else client.read_input_registers)
            try:
                response = read(block.address, count=block.count, device_id=unit_id)
            except ConnectionException as exc:
                raise ModbusReadError("connect", str(exc)) from None
            except ModbusIOException as exc:
                raise ModbusReadError("timeout", f"unit {unit_id}: no response ({exc})") \
                    from None
            except ModbusException as exc:
                raise ModbusReadError("protocol", f"unit {unit_id}: {exc}") from None
            if response.isError():
                code = getattr(response, "exception_code", "?")
                raise ModbusReadError("exception", f"unit {unit_id}: exception code {code} "
                                      f"reading {block.count} {block.register} registers "
                                      f"at {block.address}")
            words = list(response.registers)
            if len(words) != block.count:
                raise ModbusReadError("short_response", f"unit {unit_id}: {len(words)} of "
                                      f"{block.count} registers at {block.address}")
            values.update(block_values(block, words, self.cfg.word_order))
        return values

    def poll_once(self, client) -> int:
        """Read every asset once; returns how many readings went out. A failure ends the
        poll (the connection is probably gone) after emitting what was read."""
        emitted = 0
        for asset in self.cfg.assets:
            values = self.read_asset(client, asset.unit_id)
            now = time.time()
            last = self._last_time.get(asset.asset, 0.0)
            now = now if now > last else last + 1e-6  # strictly increasing per asset
            self._last_time[asset.asset] = now
            self.emit(Reading(asset.asset, now, values, time.perf_counter(),
                              {"unit_id": asset.unit_id}))
            emitted += 1
        return emitted

    def run(self) -> None:
        client = None
        next_poll = time.monotonic()
        while not self.stop_event.is_set():
            try:
                if client is None:
                    client = self._client()
                if not client.connected and not client.connect():
                    raise ModbusReadError("connect", "cannot connect")
                self.emitted += self.poll_once(client)
                self.polls += 1
            except ModbusReadError as exc:
                self._fail(exc.reason, str(exc))
                if client is not None:
                    client.close()
                client = None
                self.stop_event.wait(self.backoff.next())
                next_poll = time.monotonic()
                continue
            except Exception as exc:  # a source must outlive anything one poll does
                self._fail("error", f"{type(exc).__name__}: {exc}")
                log.debug("Modbus poll failed", exc_info=True)
                if client is not None:
                    client.close()
                client = None
                self.stop_event.wait(self.backoff.next())
                next_poll = time.monotonic()
                continue
            self.backoff.reset()
            if not self.outage.up:
                self.outage.recovered()
                self.up(True)
            next_poll += self.cfg.poll_interval
            delay = next_poll - time.monotonic()
            if delay < 0:  # the poll took longer than the interval: do not try to catch up
                next_poll, delay = time.monotonic(), 0
            self.stop_event.wait(delay)
        if client is not None:
            client.close()

    def _fail(self, reason: str, detail: str) -> None:
        self.failed(reason, detail)
        self.up(False)
        self.outage.failed(f"{reason}: {detail}")


def check_connection(cfg: ModbusSource) -> str | None:
    """None when the first asset can be read, else why not (for `check-config --connect`)."""
    got: list[Reading] = []
    poller = ModbusPoller("check", cfg, got.append, threading.Event())
    client = poller._client()
    try:
        if not client.connect():
            return f"cannot connect to {cfg.host}:{cfg.port}"
        poller.read_asset(client, cfg.assets[0].unit_id)
        return None
    except ModbusReadError as exc:
        return f"{exc.reason}: {exc}"
    finally:
        client.close()

