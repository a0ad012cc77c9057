"""Output policy of the local scorer, in one place: check every output before any work, stage, then write.

Nothing is replaced unless --overwrite says so, and even then only what this tool wrote: a metrics folder is
emptied only of the files its marker (mri44.discover.OUTPUT_MARKER) lists, and refused when it holds others.
The predictions file and its tables are replaced together or not at all: tables are staged beside their folder
and renamed into place after the predictions were written atomically.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from mri44.atomic import atomic_path, name_max, refuse_existing, staging_prefix, umask, write_text_atomic
from mri44.discover import OUTPUT_MARKER
from mri44.errors import MRI44Error
from mri44.metrics import write_tables
from mri44.predictions import for_csv

from .provenance import PROVENANCE_KEY, sidecar


class OutputError(MRI44Error):
    """An output that cannot or should not be written; the message says which and what to do."""


def unwritable(folder: Path) -> str | None:
    """Why files could not be created in folder, or None when they could; creates nothing."""
    existing = folder
    while not existing.exists():
        if existing.is_symlink():
            return f"{existing} is a dangling link"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write in {existing}"
    return None


# What a metrics folder held before its marker listed its files: an empty marker owns these names only.
LEGACY_TABLE_FILES = frozenset(
    f"{name}{suffix}"
    for name in ("summary", "per_class", "per_contrast", "per_tumor_type", "confusion")
    for suffix in (".csv", ".parquet")
) | {"confusion.png"}


def foreign_files(folder: Path) -> list[str]:
    """The entries of an existing folder that this tool did not write (all of them when it has no marker)."""
    marker = folder / OUTPUT_MARKER
    if not marker.is_file():
        return sorted(p.name for p in folder.iterdir())
    listed = set(marker.read_text().split()) or set(LEGACY_TABLE_FILES)
    return sorted(p.name for p in folder.iterdir() if p.name not in listed and p.name != OUTPUT_MARKER)


def refuse_foreign_files(folder: Path) -> None:
    foreign = foreign_files(folder)
    if foreign:
        raise OutputError(
            f"{folder} holds files mri-score did not write ({', '.join(foreign[:3])}); move them or choose "
            "another --metrics-dir"
        )


def remove_output_folder(folder: Path) -> None:
    """Remove the files we wrote into folder (listed in its marker), the marker, and the folder once empty.
    A folder holding anything else is refused: --overwrite replaces our outputs, never a user's files."""
    if not folder.is_dir():
        return
    refuse_foreign_files(folder)
    for entry in folder.iterdir():
        entry.unlink()
    folder.rmdir()


def check_outputs(input_dir: Path, out: Path, metrics_dir: Path | None, overwrite: bool) -> Path:
    """Refuse, before any scoring, every output that could not or should not be written; returns the metrics
    folder."""
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise OutputError(f"--out must end in .parquet or .csv, got {out.name}")
    target = metrics_dir or out.with_name(f"{out.stem}_metrics")
    refuse_long_names([out, target, *([sidecar(out)] if out.suffix.lower() == ".csv" else [])])
    refuse_existing(out, overwrite)
    if out.suffix.lower() == ".csv":
        refuse_existing(sidecar(out), overwrite, "the CSV's provenance file")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise OutputError(
                f"metrics folder {target} is not empty; pass --overwrite or another --metrics-dir"
            )
        refuse_foreign_files(target)
    for place, what in ((out.parent, "--out"), (target, "--metrics-dir")):
        problem = unwritable(place)
        if problem:  # found now, not after every image was scored
            raise OutputError(f"{what}: cannot write into {place}: {problem}")
    return target


def refuse_long_names(paths: list[Path]) -> None:
    """Every output name within the file system's limit, checked before any scoring (found after it, the whole
    run's work was lost)."""
    for path in paths:
        folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
        size, limit = len(path.name.encode("utf-8", "surrogateescape")), name_max(folder)
        if size > limit:
            raise OutputError(
                f"output name {path.name[:40]}... is {size} bytes, over the {limit} a file name may have here: "
                "choose a shorter --out (its metrics folder and provenance file add to its name)"
            )


def refuse_clashes(
    outputs: dict[str, Path | None], inputs: dict[str, Path | None], input_root: Path | None = None
) -> None:
    """Before any work: no output may be another output, an input (the model, the predictions a report reads),
    or an image file the run reads under input_root; and a metrics folder, which is replaced as a whole, may not
    hold another output. --overwrite replaces earlier outputs, never inputs."""
    from mri44.imageio import is_image_path

    given = {name: path.resolve() for name, path in outputs.items() if path is not None}
    sources = {name: path.resolve() for name, path in inputs.items() if path is not None}
    names = list(given)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            if given[first] == given[second]:
                raise OutputError(
                    f"{first} and {second} are the same path ({given[first]}): give each its own"
                )
    for name, path in given.items():
        for source, place in sources.items():
            if path == place:
                raise OutputError(f"{name} {path} is the {source} this run reads: write it elsewhere")
        if input_root is not None and path.is_relative_to(input_root.resolve()) and is_image_path(path):
            raise OutputError(f"{name} {path} is an image under the input folder: write it elsewhere")
    folder = given.get("--metrics-dir")
    for name, path in given.items():
        if folder is not None and name != "--metrics-dir" and (path == folder or path.is_relative_to(folder)):
            raise OutputError(f"--metrics-dir {folder} would hold {name} {path}: choose another folder")


def check_report_path(report: Path, overwrite: bool) -> None:
    refuse_existing(report, overwrite)
    problem = unwritable(report.parent)
    if problem:
        raise OutputError(f"--report: cannot write into {report.parent}: {problem}")


def no_space(exc: BaseException) -> bool:
    """A write that failed for lack of space (Polars reports it in its own error type, with the OS text)."""
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc)


def rescue(predictions: pl.DataFrame, out: Path) -> Path | None:
    """The predictions in a new file of the temporary folder (never over anything), or None when that fails."""
    try:
        fd, name = tempfile.mkstemp(prefix=f"mri44-unsaved-{out.stem}-", suffix=".parquet")
        os.close(fd)
        predictions.write_parquet(name)
        return Path(name)
    except (OSError, pl.exceptions.PolarsError):
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(name)
        return None


@contextlib.contextmanager
def said_when_full(predictions: pl.DataFrame, out: Path) -> Iterator[None]:
    """A full disk said in those words; the predictions, which took the whole run to make, kept in the temporary
    folder when there is room there."""
    try:
        yield
    except (OSError, pl.exceptions.PolarsError) as exc:
        if not no_space(exc):
            raise
        kept = rescue(predictions, out)
        raise OutputError(
            f"no space left on the device that holds {out.parent}: nothing was replaced; "
            + (f"the predictions were kept in {kept}" if kept else "the temporary folder is full too")
        ) from None


def write_outputs(
    predictions: pl.DataFrame,
    tables: dict | None,
    out: Path,
    target: Path,
    overwrite: bool,
    classes: list[str],
    provenance: dict | None = None,
) -> None:
    """Predictions and tables, both or neither replaced: tables are staged beside their folder first."""
    with said_when_full(predictions, out):
        staged = None
        try:
            if tables is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                staged = Path(tempfile.mkdtemp(prefix=staging_prefix(target.name), dir=target.parent))
                # mkdtemp's 0700 would hide the tables from colleagues on a shared server
                staged.chmod(0o777 & ~umask())
                write_tables(tables, staged, classes)
            recorded = json.dumps(provenance or {}, sort_keys=True)
            with atomic_path(out, replace=overwrite) as tmp:
                if out.suffix.lower() == ".csv":
                    for_csv(predictions).write_csv(tmp)
                    # before the table: never a table without its record
                    write_text_atomic(sidecar(out), recorded)
                else:
                    predictions.write_parquet(tmp, metadata={PROVENANCE_KEY: recorded})
                if overwrite:  # only once the new predictions are written: old tables must not outlive them
                    remove_output_folder(target)
            if staged is not None:
                remove_output_folder(target)  # empty (checked at start) or removed above
                staged.rename(target)
        except FileExistsError as exc:  # another run wrote it while we were scoring
            raise OutputError(str(exc)) from exc
        finally:
            if staged is not None and staged.exists():
                shutil.rmtree(staged, ignore_errors=True)
