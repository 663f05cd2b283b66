"""What every command line of the project shares: `-h` as well as `--help`, and errors as one
line on stderr with a non-zero exit, never a traceback (set PDM_DEBUG=1 to see one)."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

HELP_OPTIONS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


def describe_error(exc: BaseException) -> str:
    """An exception in one line: its message, or its type when it has none."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def run_app(app: Any, prog_name: str) -> NoReturn:
    """Run a typer app; an error no command handled ends it with one line and exit code 1."""
    try:
        app(prog_name=prog_name)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("PDM_DEBUG"):
            raise
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
