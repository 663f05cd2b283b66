"""A simulated PLC: C-MAPSS engines served over Modbus TCP, for demos and tests.

Each engine (unit) is a Modbus device whose unit id is its C-MAPSS unit number; its holding
(and input) registers hold the current row as float32 values, two registers per column in
C-MAPSS order (`cmapss_registers` gives the map an agent config needs). Rows advance at `rate`
per second from the moment the server starts, and stay on the last row at the end (or start
over with `loop`). The row is written into the registers when a request reads them, so every
read sees the row of that instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from typing import Any

import numpy as np

from contract.cmapss import COLUMNS
from edge_agent.sources.modbus import encode

REGISTERS_PER_VALUE = 2  # float32


def cmapss_registers(features: list[str] | None = None) -> dict[str, dict]:
    """The register map (feature -> address, type) of the simulated PLC, for an agent
    config: every C-MAPSS column, or only `features`."""
    wanted = COLUMNS if features is None else features
    return {name: {"address": COLUMNS.index(name) * REGISTERS_PER_VALUE, "register_type": "holding",
                   "data_type": "float32"} for name in wanted}


def row_registers(row: np.ndarray) -> list[int]:
    words: list[int] = []
    for value in row:
        words += encode("float32", float(value))
    return words


class PlcSimulator:
    """A Modbus TCP server in a thread of its own; `start()` returns once it listens."""

    def __init__(self, units: dict[int, np.ndarray], host: str = "127.0.0.1", port: int = 5020,
                 rate: float = 1.0, loop: bool = False) -> None:
        bad = [u for u in units if not 1 <= u <= 247]
        if bad:
            raise ValueError(f"unit ids must be 1..247 (Modbus), not {bad}")
        self.units, self.host, self.port, self.rate, self.loop = units, host, port, rate, loop
        self.reads = 0
        self._started = 0.0
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._aio: asyncio.AbstractEventLoop | None = None
        self._server: Any = None  # pymodbus' ModbusTcpServer, imported only when serving
        self._error: BaseException | None = None

    def row_index(self, unit: int, now: float | None = None) -> int:
        n = len(self.units[unit])
        step = int(((now if now is not None else time.monotonic()) - self._started) * self.rate)
        return step % n if self.loop else min(step, n - 1)

    async def _action(self, unit: int, function_code: int, start_address: int, address: int,
                      count: int, registers: list[int], set_values) -> None:
        self.reads += 1
        words = row_registers(self.units[unit][self.row_index(unit)])
        registers[:len(words)] = words
        return None

    def _devices(self) -> list:
        from pymodbus.simulator import DataType, SimData, SimDevice

        size = len(COLUMNS) * REGISTERS_PER_VALUE
        return [SimDevice(id=unit, simdata=[SimData(0, count=size, values=0,
                                                    datatype=DataType.REGISTERS)],
                          action=functools.partial(self._action, unit))
                for unit in self.units]

    def _serve(self) -> None:
        from pymodbus.server import ModbusTcpServer

        async def main() -> None:
            self._aio = asyncio.get_running_loop()
            self._server = ModbusTcpServer(self._devices(), address=(self.host, self.port))
            await self._server.serve_forever(background=True)  # RuntimeError if it cannot listen
            self._ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._server.serving

        try:
            asyncio.run(main())
        except Exception as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    def start(self) -> PlcSimulator:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._serve, name="plc-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise OSError(f"cannot serve Modbus on {self.host}:{self.port}: {self._error}")
        return self

    def stop(self) -> None:
        if self._aio is not None and self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._aio).result(10)
        if self._thread is not None:
            self._thread.join(10)
        self._aio = self._server = self._thread = None
