"""Outputs never half-write: write to a temporary file beside the target, then rename over it. And no output
replaces a file unless the user said --overwrite: every command refuses through refuse_existing, in one wording."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mri44.errors import MRI44Error

log = logging.getLogger(__name__)

LOCK_FILE = ".mri44-lock"  # in an output folder while a run writes it (held)


class OutputExistsError(MRI44Error, FileExistsError):
    """An output is already there and nothing said to replace it."""


class FolderBusyError(MRI44Error):
    """Another run holds the output folder (its lock file names the process and host)."""


def refuse_existing(path: Path, overwrite: bool = False, what: str = "") -> None:
    """Raise OutputExistsError when path exists and overwrite was not given; `what` names it ("the CSV's
    provenance file") when its path alone would not say what it is."""
    if path.exists() and not overwrite:
        raise exists_error(path, what)


def exists_error(path: Path, what: str = "") -> OutputExistsError:
    label = f"{path} ({what})" if what else str(path)
    return OutputExistsError(f"{label} exists; pass --overwrite to replace it")


def umask() -> int:
    """The process's umask (read by setting it and putting it back): outputs get the permissions of any file."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, target: Path, replace: bool) -> None:
    """Move tmp to target; without replace, fail if target exists at this very moment (not only at start)."""
    if replace:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # atomic create-if-absent: FileExistsError when another writer got there first
    except FileExistsError:
        raise exists_error(target) from None
    except OSError:  # a file system without hard links: the best we can do is check, then rename
        if target.exists():
            raise exists_error(target) from None
        os.replace(tmp, target)
        return
    tmp.unlink()


NAME_MAX = (
    255  # bytes in one file name on Linux, macOS and Windows file systems (os.pathconf says, where it can)
)
STAGING_EXTRA = 16  # the random part and suffix mkstemp / mkdtemp add to a staging prefix


def name_max(folder: Path) -> int:
    """The longest file name, in bytes, the file system holding folder allows."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # a folder not made yet, or a platform without pathconf
        return NAME_MAX


def staging_prefix(name: str, limit: int = NAME_MAX) -> str:
    """'.NAME.' for a staging file beside NAME, cut so the staging name stays within the file-name limit: a valid
    248-byte --out name lost a whole run when its staging name, 18 bytes longer, could not be created."""
    room = limit - STAGING_EXTRA - 2
    raw = name.encode("utf-8", "surrogateescape")
    return f".{raw[:room].decode('utf-8', 'ignore') if len(raw) > room else name}."


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it becomes the target, on error it vanishes.

    replace=False never replaces an existing target, even one that appeared while the caller was writing.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = staging_prefix(target.name, name_max(target.parent))
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; the result should look like any other output
        _publish(tmp, target, replace)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def held(out: Path) -> Iterator[None]:
    """Hold the output folder `out` for this run (made if missing): a lock file created atomically (O_EXCL),
    removed at the end. A lock left by a process of this host that no longer runs is taken over; any other lock
    refuses the run, so two runs never write one folder (Ray's parts, a training run's checkpoints)."""
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_FILE
    owner = f"{os.getpid()} {socket.gethostname()}"
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            if attempt == 0 and _stale(lock):
                log.warning("%s was left by a run that no longer runs: taken over", lock)
                lock.unlink(missing_ok=True)
                continue
            holder = lock.read_text(errors="replace").strip() if lock.exists() else "?"
            raise FolderBusyError(
                f"another run (pid and host: {holder}) is writing to {out}; wait for it to end, or remove {lock} "
                "if no run is"
            ) from None
    try:
        os.write(fd, owner.encode())
    except OSError:  # a full disk, say: an empty lock would refuse every later run until removed by hand
        lock.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


EMPTY_LOCK_AGE_S = 60  # a lock is written in the instant after it is made: one empty for longer never will be


def _stale(lock: Path) -> bool:
    """A lock written by a process of this host that no longer exists, or one left empty (its run could not write
    its owner into it) for longer than a run takes to write it."""
    try:
        text = lock.read_text()
        if not text.strip():
            return time.time() - lock.stat().st_mtime > EMPTY_LOCK_AGE_S
        pid, host = text.split()
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False
