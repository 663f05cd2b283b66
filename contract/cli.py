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
    """Run a typer app; an error no command handled ends it with one line and exit code 1, a
    mistyped command line with one line and exit code 2 (click's usage box says the same in
    six)."""
    import typer

    try:  # typer 0.2x vendors click and raises its own copies of click's exceptions
        from typer._click import exceptions as click_errors
    except ImportError:
        from click import exceptions as click_errors  # type: ignore[no-redef]

    try:
        code = app(prog_name=prog_name, standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(130)
    except click_errors.NoArgsIsHelpError as exc:
        exc.show()  # a bare command prints its help, as before
        sys.exit(exc.exit_code)
    except click_errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else prog_name
        print(f"error: {exc.format_message()} (see '{where} -h')", file=sys.stderr)
        sys.exit(exc.exit_code)
    except click_errors.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if os.environ.get("PDM_DEBUG"):
            raise
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
