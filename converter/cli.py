"""`python -m converter`: train, verify, report, keygen, sign."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from contract.cli import HELP_OPTIONS

app = typer.Typer(no_args_is_help=True, add_completion=False, context_settings=HELP_OPTIONS,
                  pretty_exceptions_enable=False,
                  help="Train the LSTM, quantize it for the edge, check parity, write signed "
                       "model bundles.")
console = Console(stderr=True, width=None if os.isatty(2) else 140)


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


def _windows(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give a window length or a comma list") from None
    if not values or any(not 2 <= v <= 500 for v in values):
        raise typer.BadParameter("window lengths must be between 2 and 500")
    return values


def _table(rows: list[dict]) -> Table:
    table = Table(title="models on the test set (edge modes side by side)")
    for col in ("model", "size", "invoke (1 thread)", "F1", "RUL RMSE", "decisions agree",
                "max prob. diff", "parity gate"):
        table.add_column(col)

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    for r in rows:
        table.add_row(r["model"], f(r["size_kb"], ".0f") + (" KB" if r["size_kb"] else ""),
                      f(r["invoke_us"], ".0f") + (" us" if r["invoke_us"] else ""),
                      f(r["f1"], ".3f"), f(r["rmse"], ".2f"), f(r["agreement"], ".3%"),
                      f(r["max_prob_diff"], ".4f"), r["gate"])
    return table


@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="bundle folder to write"),
    data: Path = typer.Option(None, "--data", help="C-MAPSS folder [env PDM_DATA_DIR]"),
    subset: str = typer.Option("FD001", help="C-MAPSS subset"),
    csv: Path = typer.Option(None, "--csv", help="train on a run-to-failure CSV instead"),
    asset_col: str = typer.Option("asset", help="CSV column naming the asset"),
    time_col: str = typer.Option("time", help="CSV column with the tick time"),
    features: str = typer.Option(None, help="CSV feature columns, comma separated "
                                            "(default: all others)"),
    window: str = typer.Option("30", help="window length; a comma list is chosen by "
                                          "validation loss"),
    epochs: int = typer.Option(40, help="maximum epochs (early stopping on validation)"),
    quantize: str = typer.Option("auto", help="edge mode: int8, dynamic, float16, or auto "
                                              "(the fastest that passes the gate)"),
    sign_key: Path = typer.Option(None, "--sign-key", help="Ed25519 private key (PEM)"),
    version: str = typer.Option(None, help="bundle version (default: subset-date)"),
    horizon: int = typer.Option(30, help="failure horizon H in ticks"),
    rul_cap: float = typer.Option(125.0, help="RUL cap"),
    lstm1: int = typer.Option(64, help="units of the first LSTM"),
    lstm2: int = typer.Option(32, help="units of the second LSTM"),
    rul_weight: float = typer.Option(10.0, help="loss weight of the RUL head against the "
                                                "failure head"),
    dropout: float = typer.Option(0.2),
    cell_penalty: float = typer.Option(0.0, help="loss weight keeping the LSTM cell states "
                                                 "within +-2 (narrower int8 ranges)"),
    seed: int = typer.Option(0),
    max_units: int = typer.Option(None, help="use only the first N units (quick runs)"),
    calibration_windows: int = typer.Option(1000, help="int8 representative windows"),
    regimes: int = typer.Option(None, "--regimes", min=1, max=8,
                                help="operating regimes to normalise per (default: found from "
                                     "the operational settings; 1: one global normalisation)"),
) -> None:
    """Train on C-MAPSS (or a CSV), convert every edge mode, gate and write the bundle."""
    from converter.data import DataError, prepare_cmapss, prepare_csv
    from converter.model import ModelConfig
    from converter.pipeline import AUTO, GateError, build, comparison_rows
    from converter.quantize import MODES
    from converter.verify import default_data_dir

    if quantize != AUTO and quantize not in MODES:
        raise _fail(f"--quantize {quantize!r}: choose auto, {', '.join(MODES)}")
    if sign_key is not None and not sign_key.is_file():
        raise _fail(f"--sign-key {sign_key}: no such file (make one with `keygen`)")
    cfg = ModelConfig(lstm1=lstm1, lstm2=lstm2, epochs=epochs, rul_loss_weight=rul_weight,
                      dropout=dropout, cell_penalty=cell_penalty)
    feature_list = [f.strip() for f in features.split(",")] if features else None

    def prepare(w: int):
        if csv is not None:
            return prepare_csv(csv, asset_col, time_col, feature_list, w, seed=seed,
                               regimes=regimes)
        return prepare_cmapss(data or default_data_dir(), subset, w, seed=seed,
                              max_units=max_units, regimes=regimes)

    try:
        windows = _windows(window)
        if len(windows) > 1:
            windows = [_choose_window(windows, prepare, cfg, horizon, rul_cap, seed)]
        prepared = prepare(windows[0])
        console.log(prepared.scaling_note)
        built = build(prepared, out, version or f"{subset.lower()}-{dt.date.today():%Y%m%d}",
                      sign_key, cfg, quantize, horizon, rul_cap, seed=seed,
                      calibration_windows=calibration_windows, progress=console.log)
    except DataError as exc:
        raise _fail(str(exc)) from None
    except GateError as exc:
        raise _fail(f"no bundle written: {exc}", 1) from None
    console.print(_table(comparison_rows(built.keras_metrics, built.float_report,
                                         built.candidates)))
    m = built.manifest
    console.print(f"wrote {out} (version {m.version}, edge {m.edge.file} {m.edge.quantization}, "
                  f"{'signed' if sign_key else 'UNSIGNED: gateways will refuse it; run sign'})")


def _choose_window(windows, prepare, cfg, horizon, rul_cap, seed) -> int:
    from converter.model import train as fit

    scores: dict[int, float] = {}
    for w in windows:
        p = prepare(w)
        result = fit(p.train, p.val, horizon, rul_cap, cfg, seed, verbose=0)
        scores[w] = min(result.history["val_loss"])
        console.log(f"window {w}: best validation loss {scores[w]:.4f}")
    best = min(scores, key=scores.__getitem__)
    console.log(f"chose window {best}")
    return best


@app.command()
def verify(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    trusted_key: list[Path] = typer.Option(None, "--trusted-key",
                                           help="public key(s); default: *.pub beside the "
                                                "bundle folder"),
    data: Path = typer.Option(None, "--data", help="C-MAPSS folder [env PDM_DATA_DIR, "
                                                   "default data/cmapss]"),
    csv: Path = typer.Option(None, "--csv", help="held-out run-to-failure CSV (CSV bundles)"),
    asset_col: str = typer.Option("asset"),
    time_col: str = typer.Option("time"),
) -> None:
    """Check signature and hashes, re-measure both models, apply the manifest's parity gate.
    Exits 1 when the gate fails, 2 when the bundle or the data cannot be used."""
    from contract.errors import ContractError
    from converter.data import DataError
    from converter.verify import trusted_keys_near
    from converter.verify import verify as run_verify

    keys = list(trusted_key or trusted_keys_near(bundle))
    try:
        v = run_verify(bundle, keys, data, csv, asset_col, time_col)
    except (ContractError, DataError) as exc:
        raise _fail(str(exc)) from None
    k, e, a = v.keras_metrics, v.edge_metrics, v.agreement
    console.print(f"bundle {v.manifest.version}: signature "
                  f"{'verified (' + ', '.join(map(str, keys)) + ')' if v.signed_by_trusted_key else 'NOT checked (no key)'}")  # noqa: E501
    console.print(f"test protocol: {v.test.protocol}")
    for name, x in (("float Keras", k), (f"edge {v.manifest.edge.quantization}", e)):
        console.print(f"  {name:<14} accuracy {x['accuracy']:.3f} precision {x['precision']:.3f}"
                      f" recall {x['recall']:.3f} F1 {x['f1']:.3f}  RMSE {x['rmse']:.2f}"
                      f"  NASA {x['nasa_score']:.0f}")
    console.print(f"  decisions agree on {a['decision_agreement']:.3%} of {a['windows']} "
                  f"windows; max prob. diff {a['max_prob_diff']:.4f}, mean "
                  f"{a['mean_prob_diff']:.4f}")
    console.print(f"parity gate: {'[green]' if v.gate.passed else '[red]'}{v.gate}")
    if not v.gate.passed:
        raise typer.Exit(1)


@app.command()
def report(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    out: Path = typer.Option(..., "--out", help="folder for the PNG plots and summary.md"),
    data: Path = typer.Option(None, "--data", help="C-MAPSS folder [env PDM_DATA_DIR]"),
    csv: Path = typer.Option(None, "--csv"),
    asset_col: str = typer.Option("asset"),
    time_col: str = typer.Option("time"),
) -> None:
    """Plots (training curves, confusion matrix, RUL per unit, probability over life) and a
    markdown summary."""
    from contract.errors import ContractError
    from converter.data import DataError
    from converter.report import write_report
    from converter.verify import trusted_keys_near
    from converter.verify import verify as run_verify

    try:
        v = run_verify(bundle, trusted_keys_near(bundle), data, csv, asset_col, time_col)
    except (ContractError, DataError) as exc:
        raise _fail(str(exc)) from None
    for path in write_report(v, bundle, out):
        console.print(f"wrote {path}")


@app.command()
def keygen(
    private: Path = typer.Argument(..., help="private key file to create (keep it secret)"),
    public: Path = typer.Argument(..., help="public key file to create (give to gateways)"),
) -> None:
    """Create an Ed25519 signing key pair (PEM)."""
    from contract.bundle import generate_keypair, key_fingerprint
    from contract.cli import describe_error

    for p in (private, public):
        if p.exists():
            raise _fail(f"{p} exists; refusing to overwrite a key")
    try:
        generate_keypair(private, public)
    except OSError as exc:
        raise _fail(f"cannot write the key pair: {describe_error(exc)}") from None
    console.print(f"wrote {private} (mode 600) and {public}; fingerprint "
                  f"{key_fingerprint(public)}")


@app.command()
def sign(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    key: Path = typer.Option(..., "--key", help="Ed25519 private key (PEM)"),
) -> None:
    """(Re)sign a bundle's manifest after checking every file against its hash."""
    from contract.bundle import read_manifest, sha256_file, sign_bundle
    from contract.errors import ContractError

    try:
        manifest = read_manifest(bundle)
        for name, expected in manifest.files.items():
            if not (bundle / name).is_file() or sha256_file(bundle / name) != expected:
                raise ContractError(f"{name} is missing or differs from its manifest hash; "
                                    "refusing to sign")
        sign_bundle(bundle, key)
    except (ContractError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"signed {bundle} (version {manifest.version})")


@app.command()
def version() -> None:
    """Print the version."""
    from converter import __version__

    typer.echo(__version__)
