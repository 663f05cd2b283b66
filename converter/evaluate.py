"""Metrics of both heads, edge-vs-float parity and the gate that decides whether a bundle ships.

TFLite models run through `ai_edge_litert` (the runtime the gateways use), never tf.lite, so
the figures are those of the edge.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from contract.manifest import Tolerances
from contract.preprocess import from_model_output, to_model_input
from converter.data import Windows, failure_label


class LiteModel:
    """A TFLite model in LiteRT: batched prediction and the batch-1 invoke time."""

    def __init__(self, model: bytes | str | Path, num_threads: int = 1) -> None:
        if isinstance(model, bytes):
            self.interp = Interpreter(model_content=model, num_threads=num_threads)
        else:
            self.interp = Interpreter(model_path=str(model), num_threads=num_threads)
        self.input = self.interp.get_input_details()[0]
        self.output = self.interp.get_output_details()[0]
        self._batch: int | None = None

    def _resize(self, batch: int) -> None:
        if self._batch != batch:
            shape = [batch, *self.input["shape"][1:]]
            self.interp.resize_tensor_input(self.input["index"], shape)
            self.interp.allocate_tensors()
            self.input = self.interp.get_input_details()[0]
            self.output = self.interp.get_output_details()[0]
            self._batch = batch

    def predict(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """(n, 2) float outputs for n normalised windows."""
        out = []
        for i in range(0, len(x), batch_size):
            chunk = x[i:i + batch_size]
            self._resize(len(chunk))
            self.interp.set_tensor(self.input["index"], to_model_input(chunk, self.input))
            self.interp.invoke()
            out.append(from_model_output(self.interp.get_tensor(self.output["index"]),
                                         self.output))
        return np.concatenate(out) if out else np.empty((0, 2), np.float32)

    def median_invoke_us(self, window: np.ndarray, repeats: int = 300) -> float:
        """Median wall time of one batch-1 invoke (input already set), in microseconds."""
        self._resize(1)
        self.interp.set_tensor(self.input["index"], to_model_input(window[None], self.input))
        for _ in range(20):
            self.interp.invoke()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            self.interp.invoke()
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e6


def nasa_score(predicted: np.ndarray, true: np.ndarray) -> float:
    """The PHM08 asymmetric score: late predictions (d > 0) cost more than early ones."""
    d = np.asarray(predicted, np.float64) - np.asarray(true, np.float64)
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1, np.exp(d / 10.0) - 1)))


def head_metrics(outputs: np.ndarray, windows: Windows, horizon: int, rul_cap: float,
                 threshold: float) -> dict[str, float]:
    """Classification metrics at `threshold` and RUL errors (truth capped at rul_cap, as the
    model is trained) on the scored windows."""
    truth = failure_label(windows.rul, horizon).astype(bool)
    decided = outputs[:, 0] >= threshold
    tp = int(np.sum(decided & truth))
    fp = int(np.sum(decided & ~truth))
    fn = int(np.sum(~decided & truth))
    tn = int(np.sum(~decided & ~truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    rul_pred = np.clip(outputs[:, 1], 0.0, 1.0) * rul_cap
    rul_true = np.minimum(windows.rul, rul_cap)
    return {
        "accuracy": (tp + tn) / len(truth) if len(truth) else 0.0,
        "precision": precision, "recall": recall, "f1": f1,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "rmse": float(np.sqrt(np.mean((rul_pred - rul_true) ** 2))),
        "nasa_score": nasa_score(rul_pred, rul_true),
        "n": len(truth),
    }


def parity(reference: np.ndarray, edge: np.ndarray, rul_cap: float,
           threshold: float) -> dict[str, float]:
    """How far the edge outputs stray from the float model's, over the same windows."""
    if len(reference) == 0:
        raise ValueError("no windows to compare")
    diff_p = np.abs(reference[:, 0] - edge[:, 0])
    diff_rul = np.abs(np.clip(reference[:, 1], 0, 1) - np.clip(edge[:, 1], 0, 1)) * rul_cap
    agree = (reference[:, 0] >= threshold) == (edge[:, 0] >= threshold)
    return {
        "windows": len(reference),
        "decision_agreement": float(agree.mean()),
        "decisions_differing": int((~agree).sum()),
        "max_prob_diff": float(diff_p.max()),
        "mean_prob_diff": float(diff_p.mean()),
        "max_rul_diff": float(diff_rul.max()),
        "mean_rul_diff": float(diff_rul.mean()),
    }


@dataclass
class GateResult:
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        return "passed" if self.passed else "; ".join(self.failures)


def parity_gate(float_metrics: dict[str, float], edge_metrics: dict[str, float],
                agreement: dict[str, float], tol: Tolerances) -> GateResult:
    """The tolerances of the manifest, applied to one edge model."""
    failures = []
    f1_drop = float_metrics["f1"] - edge_metrics["f1"]
    if f1_drop > tol.f1_drop + 1e-12:
        failures.append(f"F1 drops by {f1_drop:.4f} ({float_metrics['f1']:.4f} -> "
                        f"{edge_metrics['f1']:.4f}), tolerance {tol.f1_drop}")
    rmse_rise = edge_metrics["rmse"] - float_metrics["rmse"]
    if rmse_rise > tol.rmse_rise + 1e-12:
        failures.append(f"RUL RMSE rises by {rmse_rise:.3f} ({float_metrics['rmse']:.3f} -> "
                        f"{edge_metrics['rmse']:.3f}), tolerance {tol.rmse_rise}")
    if agreement["decision_agreement"] < tol.decision_agreement:
        failures.append(f"decisions agree on {agreement['decision_agreement']:.4%} of "
                        f"{agreement['windows']} windows, tolerance {tol.decision_agreement:.2%}")
    if agreement["max_prob_diff"] > tol.max_prob_diff + 1e-12:
        failures.append(f"probability differs by up to {agreement['max_prob_diff']:.4f}, "
                        f"tolerance {tol.max_prob_diff}")
    return GateResult(failures)


@dataclass
class ModelReport:
    """Everything measured about one TFLite model on the test set."""

    name: str
    mode: str
    flat: bytes
    outputs_scored: np.ndarray
    outputs_every: np.ndarray
    metrics: dict[str, float]
    agreement: dict[str, float]
    invoke_us: float
    gate: GateResult

    @property
    def size(self) -> int:
        return len(self.flat)


def measure(name: str, mode: str, flat: bytes, scored: Windows, every: Windows,
            keras_scored: np.ndarray, keras_every: np.ndarray, keras_metrics: dict[str, float],
            horizon: int, rul_cap: float, threshold: float, tol: Tolerances) -> ModelReport:
    lite = LiteModel(flat)
    out_scored, out_every = lite.predict(scored.x), lite.predict(every.x)
    metrics = head_metrics(out_scored, scored, horizon, rul_cap, threshold)
    agreement = parity(keras_every, out_every, rul_cap, threshold)
    invoke = LiteModel(flat, num_threads=1).median_invoke_us(scored.x[0])
    metrics.update(size_bytes=len(flat), invoke_us_median=invoke)
    return ModelReport(name, mode, flat, out_scored, out_every, metrics, agreement, invoke,
                       parity_gate(keras_metrics, metrics, agreement, tol))
