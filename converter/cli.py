"""`python -m converter`: train, verify, report, keygen, sign."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from contract.cli import HELP_OPTIONS
from converter import quiet
from converter.quality import QualityFloor, below_floor, describe_misses
from converter.recipe import ARCHITECTURES, DEFAULT_WINDOW, ModelConfig

app = typer.Typer(no_args_is_help=True, add_completion=False, context_settings=HELP_OPTIONS,
                  pretty_exceptions_enable=False,
                  help="Train the model, quantize it for the edge, check parity, write signed "
                       "model bundles.")
console = Console(stderr=True, width=None if os.isatty(2) else 140, log_path=False)

DATA_ENV = "PDM_DATA_DIR"
DATA_HELP = ("C-MAPSS folder (default: the repository's data/cmapss, which holds the FD001 test "
             "files only)")
LOG_SUFFIX = ".train.log"


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def default_log(out: Path) -> Path:
    """Beside the bundle folder, not in it: a bundle holds exactly the files its manifest
    lists."""
    return out.with_name(out.name + LOG_SUFFIX)


def _data_option() -> Any:  # typer.Option's own return type, so a default of any type
    return typer.Option(None, "--data", envvar=DATA_ENV, show_envvar=True, help=DATA_HELP)


def _log_option(default_text: str) -> Any:
    return typer.Option(None, "--log", help=f"file for the output of TensorFlow and the TFLite "
                                            f"converter (default: {default_text})")


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
    data: Path = _data_option(),
    subset: str = typer.Option("FD001", help="C-MAPSS subset"),
    csv: Path = typer.Option(None, "--csv", help="train on a run-to-failure CSV instead"),
    asset_col: str = typer.Option("asset", help="CSV column naming the asset"),
    time_col: str = typer.Option("time", help="CSV column with the tick time"),
    features: str = typer.Option(None, help="CSV feature columns, comma separated "
                                            "(default: all others)"),
    age: bool = typer.Option(True, "--age/--no-age",
                             help="C-MAPSS: the engine's age in cycles (column `cycle`) is a "
                                  "model input, so gateways must send it with every tick"),
    window: str = typer.Option(str(DEFAULT_WINDOW), help="window length; a comma list is "
                                                         "chosen by validation loss"),
    epochs: int = typer.Option(ModelConfig.epochs,
                               help="maximum epochs (early stopping on validation)"),
    arch: str = typer.Option(ModelConfig.arch, help="network body: cnn (temporal convolutions) "
                                                    "or lstm"),
    quantize: str = typer.Option("auto", help="edge mode: int8, dynamic, float16, or auto "
                                              "(the fastest that passes the gate)"),
    sign_key: Path = typer.Option(None, "--sign-key", help="Ed25519 private key (PEM)"),
    version: str = typer.Option(None, help="bundle version (default: subset-date)"),
    horizon: int = typer.Option(30, help="failure horizon H in ticks"),
    rul_cap: float = typer.Option(125.0, help="RUL cap"),
    lstm1: int = typer.Option(ModelConfig.lstm1, help="units of the first LSTM (--arch lstm)"),
    lstm2: int = typer.Option(ModelConfig.lstm2, help="units of the second LSTM (--arch lstm)"),
    rul_weight: float = typer.Option(ModelConfig.rul_loss_weight,
                                     help="loss weight of the RUL head against the failure head"),
    dropout: float = typer.Option(ModelConfig.dropout),
    input_noise: float = typer.Option(ModelConfig.input_noise, min=0.0,
                                      help="standard deviation of the Gaussian noise added to "
                                           "the normalised inputs while training"),
    members: int = typer.Option(ModelConfig.members, min=0,
                                help="models trained on all training assets, once early "
                                     "stopping has picked the epochs, and averaged into the "
                                     "shipped one (0: ship the early-stopped model)"),
    cell_penalty: float = typer.Option(0.0, help="loss weight keeping the LSTM cell states "
                                                 "within +-2 (narrower int8 ranges)"),
    seed: int = typer.Option(0),
    max_units: int = typer.Option(None, help="use only the first N units (quick runs)"),
    calibration_windows: int = typer.Option(1000, help="int8 representative windows"),
    min_f1: float = typer.Option(QualityFloor.min_f1, "--min-f1", min=0.0, max=1.0,
                                 help="quality floor: least F1 of the float and the edge model "
                                      "on the test set"),
    max_rmse: float = typer.Option(QualityFloor.max_rmse, "--max-rmse", min=0.0,
                                   help="quality floor: largest RUL RMSE (cycles) of the float "
                                        "and the edge model on the test set"),
    allow_weak: bool = typer.Option(False, "--allow-weak",
                                    help="write and sign a bundle below the quality floor "
                                         "(the missed figures are still printed)"),
    log: Path = _log_option(f"OUT{LOG_SUFFIX} beside the bundle folder"),
    regimes: int = typer.Option(None, "--regimes", min=1, max=8,
                                help="operating regimes to normalise per (default: found from "
                                     "the operational settings; 1: one global normalisation)"),
) -> None:
    """Train on C-MAPSS (or a CSV), convert every edge mode, gate and write the bundle.
    Exits 1 without writing when no edge model passes the parity gate or a model misses the
    quality floor, 2 when the data cannot be used."""
    if sign_key is not None and not sign_key.is_file():
        raise _fail(f"--sign-key {sign_key}: no such file (make one with `keygen`)")
    floor = QualityFloor(min_f1=min_f1, max_rmse=max_rmse)
    log_file = log or default_log(out)
    console.log(f"output of TensorFlow and the converter goes to {log_file}")
    with _quiet(log_file):
        # imported here, so that TensorFlow's import chatter goes to the log too
        from converter.data import DataError, prepare_cmapss, prepare_csv
        from converter.pipeline import AUTO, GateError, WeakModelError, build, comparison_rows
        from converter.progress import EpochProgress
        from converter.quantize import MODES
        from converter.verify import default_data_dir

        if quantize != AUTO and quantize not in MODES:
            raise _fail(f"--quantize {quantize!r}: choose auto, {', '.join(MODES)}")
        if arch not in ARCHITECTURES:
            raise _fail(f"--arch {arch!r}: choose {', '.join(ARCHITECTURES)}")
        cfg = ModelConfig(arch=arch, lstm1=lstm1, lstm2=lstm2, epochs=epochs,
                          rul_loss_weight=rul_weight, dropout=dropout, cell_penalty=cell_penalty,
                          input_noise=input_noise, members=members)
        feature_list = [f.strip() for f in features.split(",")] if features else None

        def prepare(w: int):
            if csv is not None:
                return prepare_csv(csv, asset_col, time_col, feature_list, w, seed=seed,
                                   regimes=regimes)
            return prepare_cmapss(data or default_data_dir(), subset, w, seed=seed,
                                  max_units=max_units, regimes=regimes, with_age=age)

        try:
            windows = _windows(window)
            if len(windows) > 1:
                windows = [_choose_window(windows, prepare, cfg, horizon, rul_cap, seed)]
            prepared = prepare(windows[0])
            console.log(prepared.scaling_note)
            built = build(prepared, out,
                          version or f"{subset.lower()}-{dt.date.today():%Y%m%d}", sign_key,
                          cfg, quantize, horizon, rul_cap, seed=seed,
                          calibration_windows=calibration_windows, verbose=0,
                          progress=console.log,
                          fit_callbacks=lambda label, n: [EpochProgress(console, n, label)],
                          floor=None if allow_weak else floor)
        except DataError as exc:
            raise _fail(str(exc)) from None
        except GateError as exc:
            if exc.rows:
                console.print(_table(exc.rows))
            hint = (f" (--min-f1 {floor.min_f1:g}, --max-rmse {floor.max_rmse:g}; "
                    "--allow-weak writes it anyway)" if isinstance(exc, WeakModelError) else "")
            raise _fail(f"no bundle written: {exc}{hint}", 1) from None
        console.print(_table(comparison_rows(built.keras_metrics, built.float_report,
                                             built.candidates)))
        edge = next(c for c in built.candidates if c.mode == built.chosen).measured
        misses = below_floor(floor, {"keras": built.keras_metrics, built.chosen: edge.metrics})
        if misses:
            console.print(f"[yellow]warning:[/] below the quality floor, written because of "
                          f"--allow-weak: {describe_misses(misses)}", soft_wrap=True,
                          highlight=False)
        m = built.manifest
        console.print(f"wrote {out} (version {m.version}, edge {m.edge.file} "
                      f"{m.edge.quantization}, "
                      f"{'signed' if sign_key else 'UNSIGNED: gateways will refuse it; run sign'})",
                      soft_wrap=True)


@contextlib.contextmanager
def _quiet(log: Path | None) -> Iterator[None]:
    """TensorFlow's and the converter's output to `log` (None: discarded); this CLI's own
    lines keep reaching the terminal."""
    quiet.silence_tensorflow()
    with quiet.captured_output(log) as terminal:
        console.file = terminal
        try:
            yield
        finally:
            console.file = None  # type: ignore[assignment]  # None: whatever sys.stderr is


def _choose_window(windows, prepare, cfg, horizon, rul_cap, seed) -> int:
    from converter.model import train as fit
    from converter.progress import EpochProgress

    scores: dict[int, float] = {}
    alone = dataclasses.replace(cfg, members=0)  # the validation loss decides; no refit
    for w in windows:
        p = prepare(w)
        bar = EpochProgress(console, cfg.epochs, f"window {w}")
        result = fit(p.train, p.val, horizon, rul_cap, alone, seed, verbose=0,
                     fit_callbacks=lambda _label, _epochs: [bar])  # noqa: B023 (called at once)
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
    no_signature: bool = typer.Option(False, "--no-signature",
                                      help="check hashes and parity without a trusted key "
                                           "(the signature stays unchecked)"),
    data: Path = _data_option(),
    csv: Path = typer.Option(None, "--csv", help="held-out run-to-failure CSV (CSV bundles)"),
    asset_col: str = typer.Option("asset"),
    time_col: str = typer.Option("time"),
    log: Path = _log_option("discarded"),
) -> None:
    """Check signature and hashes, re-measure both models, apply the manifest's parity gate.
    Exits 1 when the gate fails, 2 when the bundle or the data cannot be used or there is no
    trusted key to check the signature with (unless --no-signature)."""
    keys = _trusted_keys(bundle, trusted_key, no_signature)
    with _quiet(log):
        from contract.errors import ContractError
        from converter.data import DataError
        from converter.verify import verify as run_verify

        try:
            v = run_verify(bundle, keys, data, csv, asset_col, time_col)
        except (ContractError, DataError) as exc:
            raise _fail(str(exc)) from None
    k, e, a = v.keras_metrics, v.edge_metrics, v.agreement
    signature = (f"verified ({', '.join(map(str, keys))})" if v.signed_by_trusted_key
                 else "NOT checked (--no-signature)")
    console.print(f"bundle {v.manifest.version}: signature {signature}", soft_wrap=True)
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


def _trusted_keys(bundle: Path, given: list[Path] | None, no_signature: bool) -> list[Path]:
    """The keys to check the signature with; refuses (exit 2) when there are none, since an
    unchecked signature must be asked for, never the silent outcome of a missing key."""
    from converter.verify import trusted_keys_near

    if no_signature:
        if given:
            raise _fail("--trusted-key and --no-signature contradict each other; give one")
        return []
    keys = list(given or trusted_keys_near(bundle))
    if not keys:
        raise _fail(f"no trusted key to check the signature of {bundle} with (none given, no "
                    f"*.pub beside the bundle folder): pass --trusted-key KEY.pub, or "
                    f"--no-signature to check hashes and parity only")
    return keys


@app.command()
def report(
    bundle: Path = typer.Argument(..., help="bundle folder"),
    out: Path = typer.Option(..., "--out", help="folder for the PNG plots and summary.md"),
    data: Path = _data_option(),
    csv: Path = typer.Option(None, "--csv"),
    asset_col: str = typer.Option("asset"),
    time_col: str = typer.Option("time"),
    log: Path = _log_option("discarded"),
) -> None:
    """Plots (training curves, confusion matrix, RUL per unit, probability over life) and a
    markdown summary."""
    with _quiet(log):
        from contract.errors import ContractError
        from converter.data import DataError
        from converter.report import write_report
        from converter.verify import trusted_keys_near
        from converter.verify import verify as run_verify

        try:
            v = run_verify(bundle, trusted_keys_near(bundle), data, csv, asset_col, time_col)
            paths = write_report(v, bundle, out)
        except (ContractError, DataError) as exc:
            raise _fail(str(exc)) from None
    for path in paths:
        console.print(f"wrote {path}")


@app.command()
def keygen(
    private: Path = typer.Argument(..., help="private key file to create (keep it secret); "
                                             "missing folders are created"),
    public: Path = typer.Argument(..., help="public key file to create (give to gateways)"),
) -> None:
    """Create an Ed25519 signing key pair (PEM)."""
    from contract.bundle import generate_keypair, key_fingerprint
    from contract.cli import describe_error

    for p in (private, public):
        if p.exists():
            raise _fail(f"{p} exists; refusing to overwrite a key")
    try:
        # a folder made for a private key is private too (the mode applies to new folders only)
        private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        public.parent.mkdir(parents=True, exist_ok=True)
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
