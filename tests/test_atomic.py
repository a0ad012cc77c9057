"""mri44/atomic.py: the output policy every command shares (no-clobber writes, the folder lock)."""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

import pytest

from mri44.atomic import (
    EMPTY_LOCK_AGE_S,
    LOCK_FILE,
    FolderBusyError,
    OutputExistsError,
    held,
    write_text_atomic,
)


def test_a_held_folder_refuses_a_second_run_and_a_dead_runs_lock_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "new"
    with held(out):  # made when missing
        assert (out / LOCK_FILE).read_text() == f"{os.getpid()} {socket.gethostname()}"
        with pytest.raises(FolderBusyError, match="another run .* is writing to"), held(out):
            pass
        assert (out / LOCK_FILE).exists()  # the refused run leaves the holder's lock alone
    assert not (out / LOCK_FILE).exists()
    (out / LOCK_FILE).write_text(f"{2**22 + 12345} {socket.gethostname()}")  # no such process on this host
    with held(out):
        assert (out / LOCK_FILE).read_text().startswith(str(os.getpid()))
    (out / LOCK_FILE).write_text(f"{2**22 + 12345} some-other-host")  # cannot be checked: refused
    with pytest.raises(FolderBusyError, match="some-other-host"), held(out):
        pass


def test_a_lock_that_could_not_be_written_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while a run took its folder left an empty lock that refused every later run (issue 30)."""
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left"), held(tmp_path):
        pass
    monkeypatch.setattr(os, "write", real_write)
    assert not (tmp_path / LOCK_FILE).exists()
    (tmp_path / LOCK_FILE).write_text("")  # an empty lock from an older run that died so
    old = time.time() - 2 * EMPTY_LOCK_AGE_S
    os.utime(tmp_path / LOCK_FILE, (old, old))
    with held(tmp_path):  # taken over, not refused
        assert (tmp_path / LOCK_FILE).read_text().startswith(str(os.getpid()))


def test_atomic_write_replaces_whole_and_refusals_are_one_type(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    assert issubclass(OutputExistsError, FileExistsError)  # callers that catch the builtin still do
