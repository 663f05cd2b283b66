"""The model-bundle manifest: everything edge and cloud need to use a model the same way."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.versions import SAFE_NAME_PATTERN

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
KERAS_MODEL = "model.keras"
FLOAT_TFLITE = "model_float.tflite"
QuantizationMode = Literal["int8", "dynamic", "float16", "float32"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Normalisation(_Strict):
    """x_normalised = (x - offset) / scale, per feature in manifest order."""

    method: Literal["minmax", "zscore"]
    offset: list[float]
    scale: list[float]

    @model_validator(mode="after")
    def _positive_scale(self) -> Normalisation:
        if len(self.offset) != len(self.scale):
            raise ValueError("offset and scale must have one entry per feature")
        if any(not s > 0 for s in self.scale):
            raise ValueError("every scale must be > 0")
        return self

    def apply(self, values: np.ndarray) -> np.ndarray:
        return ((np.asarray(values, np.float32) - np.asarray(self.offset, np.float32))
                / np.asarray(self.scale, np.float32))


class Thresholds(_Strict):
    """Decision threshold of the failure head and the alert state machine's settings."""

    decision: float = Field(0.5, gt=0, lt=1)
    warning_enter: float = Field(0.5, gt=0, lt=1)
    warning_leave: float = Field(0.4, gt=0, lt=1)
    critical_enter: float = Field(0.85, gt=0, lt=1)
    critical_leave: float = Field(0.75, gt=0, lt=1)
    rul_warning: float | None = Field(None, gt=0)
    rul_critical: float | None = Field(None, gt=0)
    dwell: int = Field(2, ge=1, description="consecutive scores a new state must hold")

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if not self.warning_leave <= self.warning_enter:
            raise ValueError("warning_leave must be <= warning_enter (hysteresis)")
        if not self.critical_leave <= self.critical_enter:
            raise ValueError("critical_leave must be <= critical_enter (hysteresis)")
        if not self.warning_enter <= self.critical_enter:
            raise ValueError("warning_enter must be <= critical_enter")
        return self


class Tolerances(_Strict):
    """How far the edge model may stray from the float model and still ship."""

    f1_drop: float = 0.01
    rmse_rise: float = 0.5
    decision_agreement: float = 0.99


class EdgeModel(_Strict):
    file: str
    quantization: QuantizationMode


class Source(_Strict):
    dataset: str
    files: dict[str, str] = Field(description="file name -> SHA-256 of the training data")


class FeatureBins(_Strict):
    """One feature's training distribution (in one regime) as PSI bins: `edges` at training
    quantiles, `expected` the share of training ticks in each of the len(edges) + 1 bins."""

    edges: list[float] = Field(min_length=1)
    expected: list[float]

    @model_validator(mode="after")
    def _bins(self) -> FeatureBins:
        if len(self.expected) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) + 1} expected "
                             f"shares, found {len(self.expected)}")
        if any(b < a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("bin edges must not decrease")
        if any(not 0 <= s <= 1 for s in self.expected) or abs(sum(self.expected) - 1) > 1e-6:
            raise ValueError("expected shares must lie in [0, 1] and sum to 1")
        return self


class RegimeStats(_Strict):
    ticks: int = Field(gt=0, description="training ticks the bins were measured on")
    features: list[FeatureBins] = Field(min_length=1, description="in manifest feature order")


class TrainingStats(_Strict):
    """What the training inputs looked like, for drift checks (contract/drift.py): one entry
    in `regimes` for single-regime data, else one per regime in the manifest's regime order."""

    quantiles: list[float] = Field(min_length=1, description="training quantiles of the edges")
    regimes: list[RegimeStats] = Field(min_length=1)


class Manifest(_Strict):
    schema_version: Literal[1] = 1
    version: str = Field(pattern=SAFE_NAME_PATTERN)  # a folder name: never "." or ".."
    created: str
    source: Source
    features: list[str] = Field(min_length=1)
    window: int = Field(ge=2, le=500)
    padding: Literal["repeat-first"] = "repeat-first"
    normalisation: Normalisation
    horizon: int = Field(gt=0)
    rul_cap: float = Field(gt=0)
    outputs: list[Literal["probability", "rul_fraction"]] = ["probability", "rul_fraction"]
    thresholds: Thresholds = Thresholds()
    tolerances: Tolerances = Tolerances()
    edge: EdgeModel
    files: dict[str, str] = Field(description="file name -> SHA-256")
    metrics: dict[str, dict[str, float]] = {}
    # Optional: bundles written before drift checks have none (drift is then "unavailable").
    training_stats: TrainingStats | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        n = len(self.features)
        if len(self.normalisation.offset) != n:
            raise ValueError(f"normalisation has {len(self.normalisation.offset)} entries for "
                             f"{n} features")
        if len(set(self.features)) != n:
            raise ValueError("features has duplicate names")
        if self.training_stats is not None:
            for regime in self.training_stats.regimes:
                if len(regime.features) != n:
                    raise ValueError(f"training_stats has {len(regime.features)} features "
                                     f"for {n} features")
        for name in (KERAS_MODEL, FLOAT_TFLITE, self.edge.file):
            if name not in self.files:
                raise ValueError(f"files does not list {name}")
        return self
