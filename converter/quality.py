"""The quality floor: the least a model must reach on the test set to be shipped.

The parity gate only compares the edge model with the float model; a model that is poor on
both passes it. The floor judges the absolute figures of every model a bundle ships (the float
model the cloud runs and the edge model), so a weak model is refused, not signed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class QualityFloor:
    min_f1: float = 0.8      # failure-within-horizon head, on the test set
    max_rmse: float = 25.0   # RUL head, cycles, on the test set


@dataclass(frozen=True)
class FloorMiss:
    model: str
    figure: str          # "F1" or "RUL RMSE"
    value: float
    limit: float

    def __str__(self) -> str:
        if self.figure == "F1":
            return f"{self.model} F1 {self.value:.3f} < {self.limit:.3f}"
        return f"{self.model} RUL RMSE {self.value:.2f} > {self.limit:.2f}"


def below_floor(floor: QualityFloor,
                figures: Mapping[str, Mapping[str, float]]) -> list[FloorMiss]:
    """Every figure of every model (name -> metrics with 'f1' and 'rmse') that misses the floor.
    A missing or NaN figure misses it too: nothing unmeasured is shipped as good."""
    misses = []
    for model, metrics in figures.items():
        f1, rmse = float(metrics.get("f1", "nan")), float(metrics.get("rmse", "nan"))
        if not f1 >= floor.min_f1:
            misses.append(FloorMiss(model, "F1", f1, floor.min_f1))
        if not rmse <= floor.max_rmse:
            misses.append(FloorMiss(model, "RUL RMSE", rmse, floor.max_rmse))
    return misses


def describe_misses(misses: list[FloorMiss]) -> str:
    return "; ".join(map(str, misses))
