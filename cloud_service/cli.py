"""`python -m cloud_service`: run the service, check a config."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from cloud_service import pki
from cloud_service.config import ConfigError, load_config
from contract.cli import HELP_OPTIONS, describe_error

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
    if not cfg.bundle.wait:  # the signature and hashes only: the model loads in the service
        from contract.bundle import verify_bundle
        from contract.errors import ContractError

        try:
            verify_bundle(cfg.bundle.path, cfg.bundle.trusted_keys)
        except (ContractError, OSError) as exc:
            typer.echo(f"bundle: {describe_error(exc)} (set bundle.wait: true to start without "
                       "a usable bundle, not ready until one is configured)", err=True)
            raise typer.Exit(4) from None
    from cloud_service.store import StoreError, open_store

    try:  # fail early, in one line, on a store that cannot be opened (and migrate it)
        open_store(cfg.store).close()
    except StoreError as exc:
        typer.echo(f"store: {exc}", err=True)
        raise typer.Exit(3) from None
    import uvicorn

    from cloud_service.api import create_app

    uvicorn.run(create_app(cfg), host=cfg.http.host, port=cfg.http.port,
                log_level=cfg.log.level.lower(), log_config=None, access_log=False)


pki_app = typer.Typer(no_args_is_help=True, help="Certificates for mutual TLS with the broker "
                      "(CN = gateway id; see docs/security.md).")
app.add_typer(pki_app, name="pki")


@pki_app.command("init")
def pki_init(
    folder: Path = typer.Argument(..., help="folder to write the CA, broker and cloud files to"),
    host: list[str] = typer.Option([], "--host", help="another name or IP address the broker "
                                   "is reached by (repeatable), e.g. mosquitto"),
    cloud_name: str = typer.Option(pki.CLOUD_NAME, help="the cloud's CN (its broker username)"),
    days: int = typer.Option(pki.LEAF_DAYS, min=1, help="validity of the leaf certificates"),
) -> None:
    """Write a new CA, the broker's server certificate and the cloud's client certificate."""
    try:
        layout = pki.init_pki(folder, host, cloud_name, days)
    except (pki.PkiError, OSError) as exc:
        typer.echo(f"pki init: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {layout.ca.cert}, {layout.broker.cert} and {layout.cloud.cert} (keys "
               f"0600 beside them); keep {layout.ca.key} offline once gateways are issued")


@pki_app.command("gateway")
def pki_gateway(
    name: str = typer.Argument(..., help="the gateway id (its certificate's CN)"),
    folder: Path = typer.Argument(..., help="the folder `pki init` wrote"),
    days: int = typer.Option(pki.LEAF_DAYS, min=1, help="validity of the certificate"),
) -> None:
    """Write one gateway's key and certificate, signed by the CA in FOLDER."""
    try:
        identity = pki.issue_gateway(folder, name, days)
    except (pki.PkiError, OSError) as exc:
        typer.echo(f"pki gateway: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {identity.cert} and {identity.key} (0600)")


@pki_app.command("revoke")
def pki_revoke(
    name: str = typer.Argument(..., help="the gateway id whose certificate is revoked"),
    folder: Path = typer.Argument(..., help="the folder `pki init` wrote"),
) -> None:
    """Revoke a gateway's certificate: add it to FOLDER/crl.pem (the broker's crlfile; reload
    the broker with SIGHUP or a restart)."""
    try:
        count = pki.revoke_gateway(folder, name)
    except (pki.PkiError, OSError) as exc:
        typer.echo(f"pki revoke: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked {name}: {folder / 'crl.pem'} now lists {count} certificate(s); "
               "reload the broker (SIGHUP) to apply it")


@app.command()
def version() -> None:
    """Print the version."""
    from cloud_service import __version__

    typer.echo(__version__)


@app.command()
def cost(
    assets: int = typer.Option(..., "--assets", help="assets (engines, machines) in the fleet"),
    ticks_per_s: float = typer.Option(..., "--ticks-per-s", help="ticks per second per asset"),
    stride: float = typer.Option(1.0, "--stride", help="ticks between scored windows"),
    batch_s: float = typer.Option(10.0, "--batch-s",
                                  help="seconds of ticks per uplink batch (one invocation)"),
    memory_mb: float = typer.Option(512.0, "--memory-mb", help="the function's memory size"),
    prices: Path | None = typer.Option(None, "--prices",
                                       help="price table JSON (default deploy/aws/prices.json)"),
    bench_json: Path | None = typer.Option(None, "--bench-json",
                                           help="per-window compute from `python -m "
                                                "bench.serverless --json`"),
    png: Path = typer.Option(Path("serverless-cost.png"), "--png",
                             help="where to write cost against fleet size"),
) -> None:
    """Monthly cost of Lambda against a container deployment for a fleet, the break-even
    fleet size, and a PNG of cost against fleet size."""
    from cloud_service import cost as c

    try:
        fleet = c.Fleet(assets, ticks_per_s, stride, batch_s, memory_mb)
        table = c.load_prices(prices or c.PRICES)
        compute = c.load_compute(bench_json) if bench_json else c.Compute()
        lam = c.lambda_month(fleet, compute, table)
        rows = [(p, c.container_month(fleet, compute, table, p),
                 c.break_even(fleet, compute, table, p)) for p in c.PLATFORMS]
    except c.CostError as exc:
        typer.echo(f"cost: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"fleet: {assets} assets x {ticks_per_s:g} ticks/s, stride {stride:g} -> "
               f"{fleet.windows_per_s():,.1f} windows/s; prices {table.get('region', '?')} as "
               f"of {table.get('as_of', '?')}")
    typer.echo(f"compute: Lambda {compute.lambda_ms_per_window:g} ms/window + "
               f"{compute.lambda_overhead_ms:g} ms/invoke at {memory_mb:g} MB; container "
               f"{compute.container_ms_per_window:g} ms/window")
    typer.echo(f"{'deployment':<24}{'USD/month':>12}  break-even (assets)")
    typer.echo(f"{'lambda':<24}{lam:>12,.2f}")
    for platform, month, even in rows:
        where = f"container cheaper from {even:,}" if even else "Lambda cheaper up to 10M"
        typer.echo(f"{'container: ' + platform:<24}{month:>12,.2f}  {where}")
    biggest = max([e for _, _, e in rows if e] + [assets])
    try:
        c.plot(fleet, compute, table, png, upto=max(100, biggest * 10))
    except OSError as exc:
        typer.echo(f"cost: cannot write {png}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {png}")
