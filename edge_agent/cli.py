"""`python -m edge_agent`: run the agent, check a config (and its links), watch alerts, serve a
simulated PLC."""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

import typer

from contract.cli import HELP_OPTIONS, describe_error
from edge_agent.config import ConfigError, load_config

app = typer.Typer(no_args_is_help=True, add_completion=False, context_settings=HELP_OPTIONS,
                  pretty_exceptions_enable=False,
                  help="The gateway agent: sensors -> windows -> edge model -> MQTT alerts.")


def _config(path: Path):
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command("check-config")
def check_config(config: Path = typer.Argument(..., help="agent YAML file"),
                 connect: bool = typer.Option(
                     False, "--connect", help="also connect to the broker(s) and every Modbus "
                                              "and OPC UA source; exit 1 if one fails"),
                 timeout: float = typer.Option(10.0, help="seconds per link with --connect"),
                 ) -> None:
    """Validate a config file and print the effective config (environment applied, secrets
    masked)."""
    cfg = _config(config)
    if not connect:
        typer.echo(json.dumps(cfg.masked(), indent=2))
        return
    from edge_agent.links import check_links

    failed = 0
    for link, problem in check_links(cfg, timeout):
        typer.echo(f"{link}: {'ok' if problem is None else 'FAILED: ' + problem}")
        failed += problem is not None
    if failed:
        raise typer.Exit(1)


@app.command()
def run(config: Path = typer.Option(..., "--config", "-c", help="agent YAML file"),
        exit_when_drained: bool = typer.Option(
            False, help="stop once every replay source has ended and the outbox is empty"),
        duration: float = typer.Option(0, help="stop after this many seconds (0: run on)")) -> None:
    """Run the agent until SIGINT/SIGTERM."""
    cfg = _config(config)
    from edge_agent import logs
    from edge_agent.memory import limit_malloc_arenas

    limit_malloc_arenas()
    logs.setup(cfg.log.level, cfg.log.json_lines)
    from contract.errors import ContractError
    from edge_agent.agent import Agent
    from edge_agent.scorer import ModelLoadError

    log = logging.getLogger("edge_agent")
    try:
        agent = Agent(cfg)
    except (ContractError, ModelLoadError, ValueError, OSError) as exc:
        log.error("cannot start: %s", describe_error(exc))
        raise typer.Exit(1) from None
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    try:
        agent.start()
    except OSError as exc:  # the metrics port is taken, ...
        log.error("cannot start: %s", describe_error(exc))
        agent.stop()
        raise typer.Exit(1) from None
    end = time.monotonic() + duration if duration else None

    def until() -> bool:
        if end is not None and time.monotonic() >= end:
            return True
        return exit_when_drained and agent.drained()

    try:
        agent.run(until=until)
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()
    unreached = agent.unreached_brokers()
    if unreached:
        log.error("agent %s stopped without ever reaching %s; nothing it published was "
                  "delivered", cfg.gateway_id, " or ".join(unreached))
        raise typer.Exit(3)
    log.info("agent %s stopped", cfg.gateway_id)


@app.command()
def alerts(host: str = typer.Option("127.0.0.1", "--host", "-H"),
           port: int = typer.Option(1883, "--port", "-p"),
           gateway: str = typer.Option("+", "--gateway", "-g", help="one gateway, or + for all"),
           seconds: float = typer.Option(None, help="stop after this many seconds"),
           cafile: Path = typer.Option(None, help="CA of a TLS broker"),
           cert: Path = typer.Option(None, help="client certificate (mutual TLS)"),
           key: Path = typer.Option(None, help="the client certificate's key")) -> None:
    """A live table of asset states (retained) and the latest alert events."""
    from edge_agent.viewer import ViewerError, watch

    tls = None
    if cafile or cert:
        tls = (str(cafile) if cafile else None, str(cert) if cert else None,
               str(key) if key else None)
    try:
        watch(host, port, gateway, seconds, tls)
    except ViewerError as exc:
        raise _fail(str(exc)) from None


@app.command("simulate-plc")
def simulate_plc(
        file: Path = typer.Option(..., "--file", "-f", help="C-MAPSS file, e.g. test_FD001.txt"),
        units: str = typer.Option("1-10", help="units to serve: 1-10, or 3,7,9 (each unit is "
                                               "the Modbus unit id of its engine, 1..247)"),
        host: str = typer.Option("127.0.0.1", "--host", "-H"),
        port: int = typer.Option(5020, "--port", "-p", help="502 is the Modbus port (root only)"),
        rate: float = typer.Option(1.0, min=0.001, help="C-MAPSS cycles per second"),
        loop: bool = typer.Option(False, help="start over at the end of a unit's rows"),
        print_config: bool = typer.Option(
            False, "--print-config", help="print the agent `sources:` entry that reads this "
                                          "PLC and exit"),
        seconds: float = typer.Option(0, help="stop after this many seconds (0: run on)"),
) -> None:
    """Serve C-MAPSS engines as a Modbus TCP PLC (float32 holding registers), for demos."""
    import yaml

    from contract.cmapss import CmapssFormatError
    from edge_agent.plc_sim import PlcSimulator, cmapss_registers

    chosen = _unit_list(units)
    if print_config:
        from contract.bundle import read_manifest

        features = None
        default = Path(__file__).resolve().parent.parent / "models" / "default"
        if (default / "manifest.json").exists():
            features = read_manifest(default).columns
        typer.echo(yaml.safe_dump({"sources": [{
            "type": "modbus", "host": host, "port": port, "poll_interval": 1.0 / rate,
            "registers": cmapss_registers(features),
            "assets": [{"asset": f"engine-{u}", "unit_id": u} for u in chosen]}]},
            sort_keys=False))
        return
    from edge_agent.sources.replay import unit_rows

    try:
        rows = unit_rows(file)
    except (OSError, CmapssFormatError) as exc:
        raise _fail(describe_error(exc)) from None
    missing = [u for u in chosen if u not in rows]
    if missing:
        raise _fail(f"{file} has no unit(s) {missing}")
    try:
        sim = PlcSimulator({u: rows[u] for u in chosen}, host, port, rate, loop).start()
    except (OSError, ValueError) as exc:
        raise _fail(describe_error(exc)) from None
    typer.echo(f"simulated PLC on {host}:{port}: units {chosen[0]}..{chosen[-1]} "
               f"({len(chosen)}), {rate:g} cycles/s; Ctrl-C stops it", err=True)
    stop = time.monotonic() + seconds if seconds else None
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as Ctrl-C does
    try:
        while stop is None or time.monotonic() < stop:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()


def _unit_list(text: str) -> list[int]:
    try:
        units: list[int] = []
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            units += range(int(first), int(last or first) + 1)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give units as 1-10 or 3,7,9") from None
    if not units:
        raise typer.BadParameter("no units")
    return units


@app.command()
def version() -> None:
    """Print the agent version."""
    from edge_agent import __version__

    typer.echo(__version__)
