"""`python -m cloud_service`: run the service, check a config."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from cloud_service.config import ConfigError, load_config
from contract.cli import HELP_OPTIONS

app = typer.Typer(no_args_is_help=True, add_completion=False, context_settings=HELP_OPTIONS,
                  pretty_exceptions_enable=False,
                  help="The fleet side: MQTT ingest, idempotent store, batched full-LSTM "
                       "scoring, alerts, REST API.")


def _config(path: Path):
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@app.command("check-config")
def check_config(config: Path = typer.Argument(..., help="service YAML file")) -> None:
    """Validate a config file and print the effective config (environment applied, secrets
    masked)."""
    cfg = _config(config)
    typer.echo(json.dumps(cfg.masked(), indent=2))


@app.command()
def run(config: Path = typer.Option(..., "--config", "-c", help="service YAML file")) -> None:
    """Serve HTTP and consume MQTT until SIGINT/SIGTERM."""
    cfg = _config(config)
    logging.basicConfig(level=cfg.log.level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from cloud_service.api import create_app

    uvicorn.run(create_app(cfg), host=cfg.http.host, port=cfg.http.port,
                log_level=cfg.log.level.lower(), log_config=None, access_log=False)


@app.command()
def version() -> None:
    """Print the version."""
    from cloud_service import __version__

    typer.echo(__version__)
