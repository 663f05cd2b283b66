"""Where readings come from. Each source runs in its own thread and hands `Reading`s to `emit`.

`cmapss` replays C-MAPSS units (the built-in simulator), `csv` replays any CSV, `mqtt` takes
JSON readings that sensors publish on `pdm/v1/{gateway}/{asset}/raw`.
"""

from __future__ import annotations

from collections.abc import Callable

from edge_agent.readings import Reading

Emit = Callable[[Reading], None]
Reject = Callable[[str, str], None]  # (reason label, human-readable detail)
