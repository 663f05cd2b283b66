"""A progress bar over epochs (loss and validation loss) in place of Keras' per-batch lines."""

from __future__ import annotations

import math
from typing import Any

import keras
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def _figure(value: Any) -> str:
    return "-" if value is None or not math.isfinite(float(value)) else f"{float(value):.4f}"


class EpochProgress(keras.callbacks.Callback):
    """One bar for one fit: advances per epoch; early stopping leaves it short of the maximum,
    which is the point (the stage line after it names the epoch kept)."""

    def __init__(self, console: Console, epochs: int, label: str = "training") -> None:
        super().__init__()
        self._console, self._epochs, self._label = console, epochs, label
        self._bar: Progress | None = None
        self._task: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # The bar must not take over sys.stdout/sys.stderr: those lead to the log file.
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TextColumn("epochs"),
                             TextColumn("loss {task.fields[loss]}  val_loss "
                                        "{task.fields[val_loss]}"),
                             TimeElapsedColumn(), console=self._console,
                             redirect_stdout=False, redirect_stderr=False)
        self._bar.start()
        self._task = self._bar.add_task(self._label, total=self._epochs, loss="-",
                                        val_loss="-")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            logs = logs or {}
            self._bar.update(self._task, advance=1, loss=_figure(logs.get("loss")),
                             val_loss=_figure(logs.get("val_loss")))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
