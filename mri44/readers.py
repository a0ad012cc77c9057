"""Input formats: one reader per format, one table that drives both listing and reading (after ultralytics' export
table: one row per format, dispatch and detection read it).

    items = list_items(find_images(root), limits)     # an Item per image: a file, or one frame / slice of it
    pixels, tags = read_item(items[0], limits)        # uint8 H x W (grey) or H x W x 3 (RGB), and its series tags

An Item is a typed value: the file, the member (the DICOM frame or NIfTI slice, from 1; None when the file is
one image) and the format, never a string to parse, so a file named `x.nii.gz#slice=2` is just a file name. A
reader says which files it claims, how many images a file holds (from its header alone, bounded by Limits before
a row is listed) and reads one image with its tags from the same read. A new format is one module and one row here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mri44 import dicom, imageio, nifti
from mri44.dicom import NO_IMAGE
from mri44.imageio import ImageDecodeError
from mri44.limits import MAX_PIXELS, Limits

Tags = dict[str, Any]  # series tags (mri44.predictions.TAG_SCHEMA) and a fingerprint (mri44.fingerprint)


@dataclass(frozen=True)
class Item:
    path: Path  # the file
    member: int | None = None  # DICOM frame or NIfTI slice, from 1; None: the file is one image
    format: str = "raster"
    note: str | None = None  # what a reader of the row should know (frames of its file left out, say)

    def __str__(self) -> str:
        column = READERS[self.format].member_column
        return str(self.path) if self.member is None else f"{self.path} ({column} {self.member})"


@dataclass(frozen=True)
class Reader:
    format: str
    member_column: str | None  # the predictions column that numbers this format's members ("frame", "slice")
    claims: Callable[[Path], bool]  # by name (and for extension-less DICOM, its preamble)
    count: Callable[
        [Path, int], int
    ]  # images in the file, from its header, given max_pixels; 1 on doubt, 0: none
    read: Callable[[Path, int | None, int], tuple[np.ndarray, Tags | None]]  # (path, member, max_pixels)
    file_factor: int = 1  # the file may hold this many max_pixels images' bytes (a volume: VOLUME_FACTOR)


def _one(path: Path, max_pixels: int) -> int:
    return 1


# The first reader that claims a file reads it; raster takes every other image-named file.
READERS: dict[str, Reader] = {
    r.format: r
    for r in (
        Reader("dicom", "frame", dicom.is_dicom_path, dicom.frame_count, dicom.read_frame),
        Reader(
            "nifti",
            "slice",
            nifti.is_nifti_path,
            nifti.slice_count,
            nifti.read_nifti_slice,
            nifti.VOLUME_FACTOR,
        ),
        Reader("raster", None, lambda path: True, _one, imageio.read_raster),
    )
}
MEMBER_COLUMNS = tuple(r.member_column for r in READERS.values() if r.member_column)


def reader_for(path: str | os.PathLike[str]) -> Reader:
    return next(r for r in READERS.values() if r.claims(Path(path)))


def list_items(
    paths: list[Path], limits: Limits = Limits(), skipped: list[tuple[str, str]] | None = None
) -> list[Item]:
    """An Item per image to score: one per frame of a multi-frame DICOM file and per axial slice of a NIfTI
    volume, one for every other file. Only a regular file is opened to count (a FIFO named x.dcm would block);
    any other keeps one row, which becomes its error row when read. A file of more than limits.max_members
    images gives its first max_members; with `skipped`, the rest are noted there as (file, reason)."""
    out: list[Item] = []
    for path in paths:
        reader = reader_for(path)
        n = _count(reader, path, limits) if reader.member_column else 1
        if n == 0:  # a file of its format that holds no image at all (a DICOMDIR, say): not a row
            if skipped is not None:
                skipped.append((str(path), NO_IMAGE))
            continue
        if n == 1:
            out.append(Item(path, None, reader.format))
            continue
        kept = min(n, limits.max_members)
        dropped = (
            f"{reader.member_column}s {kept + 1}-{n} of {n} left out (--max-frames {kept})"
            if kept < n
            else None
        )
        out.extend(Item(path, k, reader.format, dropped) for k in range(1, kept + 1))
        if dropped and skipped is not None:
            skipped.append((str(path), dropped))
    return out


def _count(reader: Reader, path: Path, limits: Limits) -> int:
    """Images in a file, from its header; 1 for what is not a regular file or cannot be counted: that one row is
    read later and says why. Listing never stops a run, whatever a header holds."""
    try:
        return reader.count(path, limits.max_pixels) if path.is_file() else 1
    except Exception:  # a reader's own refusals return 1; anything else a hostile header provokes, too
        return 1


def item_for(path: str | os.PathLike[str]) -> Item:
    """The Item of a file that holds one image (a multi-image file without a member is that file's error)."""
    return Item(Path(path), None, reader_for(path).format)


def read_item(item: Item, limits: Limits = Limits()) -> tuple[np.ndarray, Tags | None]:
    """(pixels, tags) of one image, from one read of its file: uint8 H x W or H x W x 3 RGB, and for DICOM its
    series tags (mri44.predictions.TAG_SCHEMA), for a NIfTI slice its number, for a picture file its bytes' sha256. Whatever goes
    wrong with this one file is an ImageDecodeError naming the item (one error row), never a crash or a hang."""
    reader = READERS[item.format]
    imageio.check_file(item.path, reader.file_factor * limits.max_pixels)  # a regular file, of a sane size
    try:
        return reader.read(item.path, item.member, limits.max_pixels)
    except ImageDecodeError as exc:
        raise ImageDecodeError(item, exc.reason) from exc
    except (dicom.DicomError, nifti.NiftiError) as exc:
        raise ImageDecodeError(item, str(exc)) from exc
    except OSError as exc:
        raise ImageDecodeError(item, f"cannot read file ({exc.strerror or exc})") from exc


def read_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The pixels of a file that holds one image: any format a reader claims."""
    return read_item(item_for(path), Limits(max_pixels=max_pixels))[0]


def inside(root: Path, path: Path) -> bool:
    """Whether path, symlinks resolved, lies under root: what a report may show of a folder it was given."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a link loop, say
        return False


def row_item(root: Path, row: dict) -> Item:
    """The Item a predictions row was scored from (its path under root, and its frame or slice)."""
    path = root / row["path"]
    member = next((row[c] for c in MEMBER_COLUMNS if row.get(c) is not None), None)
    return Item(path, member, reader_for(path).format)


def member_columns(items: list[Item]) -> dict[str, list]:
    """The predictions' columns that come from the items: {"frame": [...], "slice": [...]} (null where not theirs)
    and "note"."""
    return {
        **{
            column: [i.member if READERS[i.format].member_column == column else None for i in items]
            for column in MEMBER_COLUMNS
        },
        "note": [i.note for i in items],
    }
