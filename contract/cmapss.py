"""The NASA C-MAPSS text format: column names (the feature names every tier uses) and a reader.

Numpy only, so the gateway can replay C-MAPSS files without the converter's dependencies.
Rows: unit, cycle, three operational settings, 21 sensors; whitespace separated.
"""

from __future__ import annotations

from array import array
from pathlib import Path

import numpy as np

SETTINGS = [f"setting_{i}" for i in range(1, 4)]
SENSORS = [f"sensor_{i}" for i in range(1, 22)]
COLUMNS = ["unit", "cycle", *SETTINGS, *SENSORS]


class CmapssFormatError(ValueError):
    """A C-MAPSS file that cannot be read; the message names file, line and reason."""


def read_cmapss(path: str | Path) -> np.ndarray:
    """All rows of a C-MAPSS file as a float64 array of len(COLUMNS) columns, checked."""
    path = Path(path)
    # A flat array of doubles, not a list of Python floats: a float object costs ~4x its value,
    # and the agent's peak memory is set while the file is read.
    values = array("d")
    last: dict[int, float] = {}
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != len(COLUMNS):
                raise CmapssFormatError(f"{path}:{lineno}: expected {len(COLUMNS)} columns, "
                                        f"found {len(fields)}")
            try:
                row = [float(f) for f in fields]
            except ValueError as exc:
                raise CmapssFormatError(f"{path}:{lineno}: not a number ({exc})") from None
            if not np.isfinite(row).all():
                raise CmapssFormatError(f"{path}:{lineno}: NaN or infinite value")
            unit, cycle = int(row[0]), row[1]
            if unit in last and cycle <= last[unit]:
                raise CmapssFormatError(f"{path}:{lineno}: unit {unit} time goes backwards "
                                        f"(cycle {cycle:g} after {last[unit]:g})")
            last[unit] = cycle
            values.extend(row)
    if not values:
        raise CmapssFormatError(f"{path}: no data rows")
    return np.frombuffer(values, dtype=np.float64).reshape(-1, len(COLUMNS))
