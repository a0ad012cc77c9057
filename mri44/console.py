"""What every command shares: one log handler (stderr, plain messages) and one error handler (one line, exit 2).

Expected failures (bad input, missing files, refused settings: our own error classes and the OS's) are printed as
`error: <message>` with exit code 2, never as a traceback; set MRI44_DEBUG=1 to see the traceback of one anyway.
Anything else is a bug and keeps its traceback: a ValueError from numpy or a RuntimeError from torch says nothing
a user can act on, and one line would hide where it came from.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import sys
import tarfile
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer

from mri44.errors import MRI44Error

# What a user can cause and fix: the message says what to do. Anything else is a bug and keeps its traceback.
# typer's own Exit, Abort and usage errors are none of these, so they pass through to typer untouched.
USER_ERRORS: tuple[type[BaseException], ...] = (MRI44Error, OSError, tarfile.TarError)
PACKAGES = ("mri44", "train", "export", "score", "benchmarks")

F = TypeVar("F", bound=Callable[..., Any])


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Our packages' INFO messages to stderr as plain lines; other libraries' only from WARNING up. Idempotent."""
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
        logger.propagate = False


@contextlib.contextmanager
def library_warnings_counted(log: logging.Logger) -> Iterator[None]:
    """Warnings that libraries raise while reading many files (pydicom's "Expected explicit VR ...", one per
    file) become one log line with their count and the most frequent message, not a screenful of stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    if caught:
        messages = collections.Counter(f"{w.category.__name__}: {w.message}" for w in caught)
        top, n = messages.most_common(1)[0]
        log.info(
            "%d warning(s) from the libraries that read the files, %d kind(s); most often (%dx): %s",
            len(caught),
            len(messages),
            n,
            top,
        )


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` on stderr; raise the returned Exit to end the command with `code`."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def user_errors(command: F) -> F:
    """Decorator for a command: logging set up, and a user error becomes one line and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging()
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as exc:
            if os.environ.get("MRI44_DEBUG"):
                raise
            raise fail(str(exc)) from exc

    return wrapper  # type: ignore[return-value]
