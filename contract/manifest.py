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


class Regimes(_Strict):
    """Operating regimes (load, speed, altitude...) and each regime's sensor statistics.

    A tick's regime is the centre nearest to its operational settings, measured after each
    setting is standardised: z = (setting - setting_offset) / setting_scale. Its features are
    then normalised with that regime's row of `offset` and `scale` (feature order of the
    manifest): x = (value - offset) / scale. A tick farther than `max_distance` from every
    centre is out of regime: it is still normalised with the nearest regime's statistics (a
    score is better than a gap in the window), but flagged so callers count and log it.
    `contract.preprocess.Normaliser` applies all this.
    """

    settings: list[str] = Field(min_length=1, description="operational-setting columns")
    setting_offset: list[float]
    setting_scale: list[float]
    centres: list[list[float]] = Field(min_length=1, description="per regime, standardised "
                                                                 "settings")
    max_distance: float = Field(gt=0, description="standardised distance beyond which a tick "
                                                  "is out of every regime")
    method: Literal["minmax", "zscore"]
    offset: list[list[float]] = Field(description="per regime, per feature")
    scale: list[list[float]] = Field(description="per regime, per feature")

    @model_validator(mode="after")
    def _shapes(self) -> Regimes:
        n_set = len(self.settings)
        if len(set(self.settings)) != n_set:
            raise ValueError("regimes.settings has duplicate names")
        if len(self.setting_offset) != n_set or len(self.setting_scale) != n_set:
            raise ValueError("setting_offset and setting_scale need one entry per setting")
        if any(not s > 0 for s in self.setting_scale):
            raise ValueError("every setting_scale must be > 0")
        if any(len(c) != n_set for c in self.centres):
            raise ValueError(f"every centre needs {n_set} coordinates (one per setting)")
        k = len(self.centres)
        if len(self.offset) != k or len(self.scale) != k:
            raise ValueError(f"offset and scale need one row per regime ({k})")
        widths = {len(row) for row in (*self.offset, *self.scale)}
        if len(widths) != 1:
            raise ValueError("offset and scale rows must all have one entry per feature")
        if any(not s > 0 for row in self.scale for s in row):
            raise ValueError("every scale must be > 0")
        return self

    @property
    def count(self) -> int:
        return len(self.centres)

    @property
    def width(self) -> int:
        """Features per regime row."""
        return len(self.offset[0])

    def subset(self, index: list[int]) -> Regimes:
        """The same regimes with statistics for the features at `index` only, in that order."""
        return self.model_copy(update={"offset": [[row[i] for i in index] for row in self.offset],
                                       "scale": [[row[i] for i in index] for row in self.scale]})


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
    """How far the edge model may stray from the float model and still ship (the parity gate,
    over every window of the test assets), and how closely a new bundle must agree with the
    running one in a gateway's self-test before it swaps (`update_agreement`: two models
    trained apart may differ more than one model and its quantized copy)."""

    f1_drop: float = 0.01
    rmse_rise: float = 0.5
    decision_agreement: float = Field(0.999, gt=0, le=1)
    max_prob_diff: float = Field(0.05, gt=0, le=1)
    update_agreement: float = Field(0.99, gt=0, le=1)


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
    """Schema 1: one global normalisation. Schema 2 adds `regimes`; a schema-2 manifest has
    either `regimes` (per-regime statistics) or `normalisation` (one regime), never both."""

    schema_version: Literal[1, 2] = 2
    version: str = Field(pattern=SAFE_NAME_PATTERN)  # a folder name: never "." or ".."
    created: str
    source: Source
    features: list[str] = Field(min_length=1)
    window: int = Field(ge=2, le=500)
    padding: Literal["repeat-first"] = "repeat-first"
    normalisation: Normalisation | None = None
    regimes: Regimes | None = None
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
        if self.regimes is not None and self.schema_version < 2:
            raise ValueError("regimes need schema_version 2")
        if self.regimes is not None and self.normalisation is None:
            width = self.regimes.width
        elif self.normalisation is not None and self.regimes is None:
            width = len(self.normalisation.offset)
        else:
            raise ValueError("give exactly one of normalisation (one regime) and regimes")
        if width != n:
            raise ValueError(f"normalisation has {width} entries for {n} features")
        if len(set(self.features)) != n:
            raise ValueError("features has duplicate names")
        if self.training_stats is not None:
            regimes = self.regimes.count if self.regimes is not None else 1
            if len(self.training_stats.regimes) != regimes:
                raise ValueError(f"training_stats has {len(self.training_stats.regimes)} "
                                 f"regime(s), the model {regimes}")
            for regime in self.training_stats.regimes:
                if len(regime.features) != n:
                    raise ValueError(f"training_stats has {len(regime.features)} features "
                                     f"for {n} features")
        for name in (KERAS_MODEL, FLOAT_TFLITE, self.edge.file):
            if name not in self.files:
                raise ValueError(f"files does not list {name}")
        return self

    @property
    def columns(self) -> list[str]:
        """The raw columns every tick carries, in order: the features, then the operational
        settings the regimes are found from (those not already features). Readings, windows,
        the outbox and uplink batches hold these; the model sees only `features`."""
        if self.regimes is None:
            return list(self.features)
        return [*self.features, *(s for s in self.regimes.settings if s not in self.features)]
