"""train -> convert every edge mode -> measure -> parity gate -> signed bundle.

The bundle folder holds exactly the files its manifest lists (model.keras, model_float.tflite,
the edge model, history.json with the training curves) plus manifest.json and manifest.sig.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contract.bundle import sha256_file, sign_bundle
from contract.manifest import (
    FLOAT_TFLITE,
    KERAS_MODEL,
    MANIFEST,
    EdgeModel,
    Manifest,
    Source,
    Thresholds,
    Tolerances,
)
from converter import model as lstm
from converter import quantize
from converter.data import Prepared, stratified_sample
from converter.evaluate import ModelReport, head_metrics, measure
from converter.quality import FloorMiss, QualityFloor, below_floor, describe_misses
from converter.recipe import ModelConfig

HISTORY = "history.json"
AUTO = "auto"


class GateError(RuntimeError):
    """A measured model refused: no edge model passed the parity gate (or the requested one
    did not), or (WeakModelError) a shipped model misses the quality floor. `rows` holds the
    side-by-side comparison when `build` measured the models, so the caller can show it."""

    rows: list[dict[str, object]] | None = None


class WeakModelError(GateError):
    """A shipped model (float or edge) misses the quality floor; nothing was written."""

    def __init__(self, misses: list[FloorMiss]) -> None:
        super().__init__(f"below the quality floor: {describe_misses(misses)}")
        self.misses = misses


@dataclass
class Candidate:
    mode: str
    report: ModelReport | None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.report is not None and self.report.gate.passed

    @property
    def verdict(self) -> str:
        if self.report is None:
            return f"conversion failed: {self.error}"
        return str(self.report.gate)

    @property
    def measured(self) -> ModelReport:
        """The report of a mode that converted: only those can pass the gate and be chosen."""
        if self.report is None:
            raise GateError(f"mode {self.mode} has no edge model: {self.verdict}")
        return self.report


@dataclass
class Built:
    bundle: Path
    manifest: Manifest
    keras_metrics: dict[str, float]
    float_report: ModelReport
    candidates: list[Candidate]
    chosen: str
    train_seconds: float


def _say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress:
        progress(text)


def train_and_measure(prepared: Prepared, horizon: int, rul_cap: float, cfg: ModelConfig,
                      modes: list[str], thresholds: Thresholds, tolerances: Tolerances,
                      seed: int = 0, calibration_windows: int = 1000, verbose: int = 2,
                      progress: Callable[[str], None] | None = None,
                      fit_callbacks: lstm.FitCallbacks | None = None):
    """Train the float model and measure it and every requested edge mode on the test set."""
    _say(progress, f"training on {len(prepared.train)} windows of {len(prepared.train_assets)} "
                   f"assets (validation: {len(prepared.val)} windows, "
                   f"{len(prepared.val_assets)} assets)")
    trained = lstm.train(prepared.train, prepared.val, horizon, rul_cap, cfg, seed, verbose,
                         fit_callbacks)
    kept = f"kept epoch {trained.best_epoch} of {len(trained.history.get('loss', []))}"
    if trained.members:
        assets = len(prepared.train_assets) + len(prepared.val_assets)
        kept += (f"; the model is the average of {trained.members} trained for "
                 f"{trained.best_epoch} epochs on all {assets} training assets")
    _say(progress, f"{kept} ({trained.seconds:.0f} s)")
    test = prepared.test
    keras_scored = lstm.predict(trained.model, test.scored.x)
    keras_every = lstm.predict(trained.model, test.every.x)
    keras_metrics = head_metrics(keras_scored, test.scored, horizon, rul_cap,
                                 thresholds.decision)

    def run(name: str, mode: str, flat: bytes) -> ModelReport:
        return measure(name, mode, flat, test.scored, test.every, keras_scored, keras_every,
                       keras_metrics, horizon, rul_cap, thresholds.decision, tolerances)

    _say(progress, "converting to float32 TFLite")
    float_report = run("float32", "float32", quantize.convert_float(trained.model))
    representative = stratified_sample(prepared.train, calibration_windows, seed).x
    candidates = []
    for mode in modes:
        _say(progress, f"converting to {mode} and measuring it")
        try:
            flat = quantize.convert(trained.model, mode, representative)
        except quantize.QuantizationError as exc:
            candidates.append(Candidate(mode, None, str(exc)))
            continue
        candidates.append(Candidate(mode, run(mode, mode, flat)))
    return trained, keras_metrics, float_report, candidates


def choose(candidates: list[Candidate], requested: str) -> Candidate:
    """The requested mode if it passes the gate; with `auto`, the fastest mode that passes."""
    if requested != AUTO:
        for c in candidates:
            if c.mode == requested:
                if not c.passed:
                    raise GateError(f"the {requested} edge model fails the parity gate: "
                                    f"{c.verdict}")
                return c
        raise GateError(f"mode {requested} was not converted")
    passing = [c for c in candidates if c.passed]
    if not passing:
        raise GateError("no edge model passes the parity gate: " + "; ".join(
            f"{c.mode}: {c.verdict}" for c in candidates))
    return min(passing, key=lambda c: c.measured.invoke_us)


def _metrics_entry(report: ModelReport) -> dict[str, float]:
    entry = {k: float(v) for k, v in report.metrics.items()}
    entry.update({k: float(v) for k, v in report.agreement.items()})
    return entry


def write_bundle(out: Path, prepared: Prepared, trained: lstm.TrainResult,
                 keras_metrics: dict[str, float], float_report: ModelReport,
                 candidates: list[Candidate], chosen: Candidate, version: str, horizon: int,
                 rul_cap: float, thresholds: Thresholds, tolerances: Tolerances,
                 sign_key: Path | None) -> Manifest:
    """Write the bundle atomically: into a sibling temp folder, then renamed over `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        trained.model.save(tmp / KERAS_MODEL)
        (tmp / FLOAT_TFLITE).write_bytes(float_report.flat)
        edge_file = quantize.EDGE_FILE[chosen.mode]
        (tmp / edge_file).write_bytes(chosen.measured.flat)
        (tmp / HISTORY).write_text(json.dumps({"history": trained.history,
                                               "best_epoch": trained.best_epoch,
                                               "members": trained.members,
                                               "seconds": round(trained.seconds, 1)}))
        metrics = {"keras": {k: float(v) for k, v in keras_metrics.items()},
                   "float32": _metrics_entry(float_report)}
        for c in candidates:
            if c.report is not None:
                metrics[c.mode] = _metrics_entry(c.report)
        metrics["training"] = {"seconds": round(trained.seconds, 1),
                               "best_epoch": float(trained.best_epoch),
                               "members": float(trained.members),
                               "train_windows": float(len(prepared.train)),
                               "val_windows": float(len(prepared.val))}
        manifest = Manifest(
            version=version,
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            source=Source(dataset=prepared.dataset,
                          files={p.name: sha256_file(p) for p in prepared.source_files.values()}),
            features=prepared.features, window=prepared.window,
            normalisation=prepared.normalisation, regimes=prepared.regimes, horizon=horizon,
            rul_cap=rul_cap,
            thresholds=thresholds, tolerances=tolerances,
            edge=EdgeModel(file=edge_file, quantization=chosen.mode),
            files={p.name: sha256_file(p) for p in sorted(tmp.iterdir())},
            metrics=metrics, training_stats=prepared.training_stats)
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        if sign_key is not None:
            sign_bundle(tmp, sign_key)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def build(prepared: Prepared, out: Path, version: str, sign_key: Path | None,
          cfg: ModelConfig, mode: str = AUTO, horizon: int = 30, rul_cap: float = 125.0,
          thresholds: Thresholds | None = None, tolerances: Tolerances | None = None,
          seed: int = 0, calibration_windows: int = 1000, verbose: int = 2,
          progress: Callable[[str], None] | None = None,
          fit_callbacks: lstm.FitCallbacks | None = None,
          floor: QualityFloor | None = None) -> Built:
    """Train, measure, gate, write. With a `floor`, refuses (WeakModelError) when the float
    model or the chosen edge model misses it; nothing is written then."""
    thresholds = thresholds or Thresholds()
    tolerances = tolerances or Tolerances()
    # every mode is measured, the one named or not, so the report and the manifest always
    # show them side by side
    trained, keras_metrics, float_report, candidates = train_and_measure(
        prepared, horizon, rul_cap, cfg, list(quantize.MODES), thresholds, tolerances, seed,
        calibration_windows, verbose, progress, fit_callbacks)
    try:
        chosen = choose(candidates, mode)
        misses = [] if floor is None else below_floor(floor, {
            "keras": keras_metrics, chosen.mode: chosen.measured.metrics})
        if misses:
            raise WeakModelError(misses)
    except GateError as exc:  # the caller shows the comparison beside the refusal
        exc.rows = comparison_rows(keras_metrics, float_report, candidates)
        raise
    manifest = write_bundle(out, prepared, trained, keras_metrics, float_report, candidates,
                            chosen, version, horizon, rul_cap, thresholds, tolerances, sign_key)
    return Built(out, manifest, keras_metrics, float_report, candidates, chosen.mode,
                 trained.seconds)


def comparison_rows(keras_metrics: dict[str, float], float_report: ModelReport,
                    candidates: list[Candidate]) -> list[dict[str, object]]:
    """One row per model for the side-by-side table `train` prints."""
    rows: list[dict[str, object]] = [{"model": "keras (float)", "size_kb": None, "invoke_us": None,
             "f1": keras_metrics["f1"], "rmse": keras_metrics["rmse"],
             "agreement": None, "max_prob_diff": None, "gate": "reference"}]
    for name, rep, verdict in [("float32 tflite", float_report, str(float_report.gate)),
                               *[(c.mode, c.report, c.verdict) for c in candidates]]:
        if rep is None:
            rows.append({"model": name, "size_kb": None, "invoke_us": None, "f1": None,
                         "rmse": None, "agreement": None, "max_prob_diff": None,
                         "gate": verdict})
            continue
        rows.append({"model": name, "size_kb": rep.size / 1024, "invoke_us": rep.invoke_us,
                     "f1": rep.metrics["f1"], "rmse": rep.metrics["rmse"],
                     "agreement": rep.agreement["decision_agreement"],
                     "max_prob_diff": rep.agreement["max_prob_diff"], "gate": verdict})
    return rows

