"""Keep TensorFlow's chatter off the terminal and in a log file instead.

TensorFlow 2.21 logs through absl before its own log level applies (the "oneDNN custom
operations are on" notice, once per loaded library), and the TFLite converter prints the
exported signature ("Saved artifact at ... TensorSpec ...") from Python and from C++. Only a
redirection of the file descriptors 1 and 2 catches the C++ part, so `captured_output` moves
both into the log for the duration of the heavy work and hands back a stream to the terminal
for the lines meant for people (stage lines, the progress bar, the comparison table).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

# TF_CPP_MIN_LOG_LEVEL: 2 keeps C++ errors only; oneDNN stays on (it is faster here), its
# notice goes to the log with the rest.
TF_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2"}
_PYTHON_LOGGERS = ("tensorflow", "absl", "keras")


def silence_tensorflow() -> None:
    """Set TensorFlow's logging environment; effective only before TensorFlow is imported
    (the C++ side reads it once). A value the user set is kept."""
    for key, value in TF_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    for name in _PYTHON_LOGGERS:  # their INFO lines ("Assets written to ...") are noise here
        logging.getLogger(name).setLevel(logging.WARNING)


def _fd_stream(fd: int) -> TextIO:
    """A text stream over descriptor `fd` that never closes it: a logging handler created
    while the capture is on may keep it and must stay usable afterwards."""
    return open(fd, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)


def _is_fd(stream: TextIO, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


@contextlib.contextmanager
def captured_output(log: Path | None) -> Iterator[TextIO]:
    """Send everything written to stdout and stderr, by Python or by C++ code, into `log`
    (discard it when `log` is None) until the block ends. Yields a stream to where stderr went
    before, for the output meant for people."""
    sys.stdout.flush()
    sys.stderr.flush()
    before = sys.stderr
    if log is not None:
        log = Path(log)
        log.parent.mkdir(parents=True, exist_ok=True)
        sink = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    else:
        sink = os.open(os.devnull, os.O_WRONLY)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    # The terminal: the real stderr (a copy of descriptor 2 taken before the redirection), or
    # the stream that stood in for it (a test runner's buffer, which no descriptor reaches).
    terminal: TextIO = (open(os.dup(2), "w", buffering=1, encoding="utf-8",  # noqa: SIM115
                             errors="replace") if _is_fd(before, 2) else before)  # closed below
    out, err = _fd_stream(1), _fd_stream(2)
    try:
        os.dup2(sink, 1)
        os.dup2(sink, 2)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield terminal
    finally:
        for stream in (out, err, sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(sink)
        if terminal is not before:
            terminal.close()
