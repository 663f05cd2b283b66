"""`python -m edge_agent`: run the agent, check a config, watch alerts."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path

import typer

from edge_agent.config import ConfigError, load_config

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="The gateway agent: sensors -> windows -> edge model -> MQTT alerts.")


def _config(path: Path):
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@app.command("check-config")
def check_config(config: Path = typer.Argument(..., help="agent YAML file")) -> None:
    """Validate a config file and print the effective config (environment applied, secrets
    masked)."""
    cfg = _config(config)
    typer.echo(json.dumps(cfg.masked(), indent=2))


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

    try:
        agent = Agent(cfg)
    except (ContractError, ModelLoadError, ValueError, OSError) as exc:
        logging.getLogger("edge_agent").error("cannot start: %s", exc)
        raise typer.Exit(1) from None
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    agent.start()
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


@app.command()
def alerts(host: str = typer.Option("127.0.0.1", "--host", "-h"),
           port: int = typer.Option(1883, "--port", "-p"),
           gateway: str = typer.Option("+", "--gateway", "-g", help="one gateway, or + for all"),
           seconds: float = typer.Option(None, help="stop after this many seconds")) -> None:
    """A live table of asset states (retained) and the latest alert events."""
    from edge_agent.viewer import watch

    watch(host, port, gateway, seconds)


@app.command()
def version() -> None:
    """Print the agent version."""
    from edge_agent import __version__

    typer.echo(__version__)


def main() -> None:  # pragma: no cover
    app(prog_name="python -m edge_agent")
    sys.exit(0)
