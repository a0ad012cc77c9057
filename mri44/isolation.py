"""Native decoders that can kill the process run in worker processes, where a death costs one file.

GDCM, OpenJPEG and other C/C++ codecs abort (SIGABRT) or crash on some hostile inputs; in the scorer's process that
would end the run and lose every other image's work, and under Ray it made a task retry without end. Here such a
call runs in a small pool of worker processes (started by forkserver: clean, single-threaded, never a fork of the
threaded scorer). A worker that dies breaks the pool; the pool is replaced and the call tried again, since an
innocent file can be in flight when another one kills a worker. A call that kills its worker every time becomes
DecoderCrashed, which names the signal: that file's error row, and the run goes on.

Only codecs are isolated (mri44.dicom's compressed transfer syntaxes); plain images and uncompressed DICOM decode
in-process, so isolation costs nothing where nothing native can abort.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from mri44.errors import MRI44Error

T = TypeVar("T")
WORKERS = 2  # as many as the scorer's decode threads on our 2-core machines; more only queue
ATTEMPTS = 3  # a file that kills its worker this many times is the killer, not a bystander


class DecoderCrashed(MRI44Error):
    """A decoder killed its worker process every time it ran on this input."""


_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _silent_worker() -> None:
    """A decoder's warnings in a worker would reach the terminal past the parent's count of them
    (mri44.console.library_warnings_counted): the row's status says what came of the decode."""
    import warnings

    warnings.simplefilter("ignore")


def _current() -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(
                WORKERS, mp_context=multiprocessing.get_context("forkserver"), initializer=_silent_worker
            )
        return _pool


def _replace(broken: ProcessPoolExecutor) -> str:
    """Drop a broken pool (once, whichever thread sees it first); returns how its workers died.

    The exit codes are read after the pool's own thread has reaped its workers (shutdown with wait): the pool
    fails the call before it reaps them, and an exit code read meanwhile raced that thread for the forkserver's
    status pipe and could come back as 255 instead of -SIGABRT (2 calls in 30, measured)."""
    global _pool
    processes = list((getattr(broken, "_processes", None) or {}).values())
    with _lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=True, cancel_futures=True)
    codes = [p.exitcode for p in processes]
    signals = sorted({-c for c in codes if c is not None and c < 0})
    return ", ".join(signal.Signals(s).name for s in signals) or "the worker process died"


def run_isolated(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a worker process: its result, or the exception it raised (re-raised here), or
    DecoderCrashed when it killed its worker ATTEMPTS times. fn and args must be picklable (a module-level
    function, paths, bytes, numbers)."""
    how = ""
    for _ in range(ATTEMPTS):
        pool = _current()
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            how = _replace(pool)
    raise DecoderCrashed(f"decoder crashed ({how}): the file was not decoded")
