"""NIfTI volumes (the nifti extra: pip install 'mri44[nifti]', nibabel): `.nii` and `.nii.gz` files, the research
format of brain MRI, scored slice by slice like images.

A volume is reoriented to the closest canonical orientation (RAS+, nibabel's as_closest_canonical), so its third
axis runs foot to head and each index along it is an axial slice; mri44.readers lists slice K (from 1, foot first)
as its own item, one row each, with the slice number in the predictions' `slice` column. Slices are shown as a radiologist's viewer does (anterior up, the patient's
right on the image's left) with one intensity window for the whole volume, its 0.5th to 99.5th percentile, so
that slices of one volume stay comparable (NIfTI has no window of its own).

The model was trained on 2-D key slices of tumours: slices far from a lesion, and the top and bottom of the head,
are outside what it learned, so per-slice answers there mean little; the volume row (mri44.predictions
.series_table: the class of the mean slice probabilities) is the summary to read.

Memory is bounded by one volume: its header is checked before any voxel is read (each slice within --max-pixels,
the whole volume within VOLUME_FACTOR times that), and the last volume read is kept for the next slices.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from mri44.errors import import_extra
from mri44.limits import VOLUME_FACTOR


class NiftiError(Exception):
    """Why a NIfTI volume or slice could not be read."""


def is_nifti_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).name.lower().endswith((".nii", ".nii.gz"))


def _nibabel():
    return import_extra("nibabel", "nifti", "NIfTI input", NiftiError)


def volume_shape(path: Path, max_pixels: int) -> tuple[int, int, int]:
    """The volume's shape in canonical (RAS+) axis order, from the header alone (nibabel loads voxels lazily, and
    only the affine's orientation is used here: reorienting the image itself would read every voxel), once its
    claims are bounded."""
    try:
        image = _nibabel().load(str(path))
        shape = tuple(int(d) for d in image.shape)
        axes = _nibabel().orientations.io_orientation(image.affine)[:, 0]  # output axis of each stored axis
    except NiftiError:
        raise
    except Exception as exc:  # nibabel raises many kinds on a malformed header
        raise NiftiError(f"unreadable NIfTI header ({exc.__class__.__name__}: {exc})") from exc
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise NiftiError(f"NIfTI of shape {shape}: only 3-D volumes are scored (one volume, no time series)")
    x, y, z = shape
    if min(shape) < 1:
        raise NiftiError(f"NIfTI of shape {shape} holds no voxels")
    if max(x * y, y * z, x * z) > max_pixels:
        raise NiftiError(
            f"NIfTI slices of up to {max(x * y, y * z, x * z):,} pixels, over the limit of {max_pixels:,} (--max-pixels)"
        )
    if x * y * z > VOLUME_FACTOR * max_pixels:
        raise NiftiError(
            f"NIfTI volume of {x * y * z:,} voxels, over {VOLUME_FACTOR} x the limit of {max_pixels:,} (--max-pixels)"
        )
    if not np.isfinite(axes[:3]).all():
        raise NiftiError(
            "NIfTI whose affine does not say which way its axes run (a rank-deficient sform or qform): its axial "
            "slices cannot be found"
        )
    stored_bytes = x * y * z * image.header.get_data_dtype().itemsize
    if (
        stored_bytes > 4 * VOLUME_FACTOR * max_pixels
    ):  # as many bytes as float32 voxels within the voxel limit
        raise NiftiError(
            f"NIfTI volume of {stored_bytes:,} bytes of voxels, over {4 * VOLUME_FACTOR * max_pixels:,} "
            "(4 bytes per voxel within --max-pixels)"
        )
    canonical = [0, 0, 0]
    for stored, out in enumerate(axes[:3]):
        canonical[int(out)] = shape[stored]
    return canonical[0], canonical[1], canonical[2]


def slice_count(path: Path, max_pixels: int) -> int:
    """Axial slices after canonical reorientation; 1 when the volume cannot be trusted (its one row then says
    why)."""
    try:
        return volume_shape(path, max_pixels)[2]
    except (NiftiError, OSError):
        return 1


# One volume in memory per process, whichever thread asked for it (the cap holds per file, not per thread: with a
# cache per thread, every decoding thread held its own copy): (path, mtime) and the volume as uint8 in display
# order. A thread reading a slice holds the lock while its volume is loaded or copied from.
_lock = threading.Lock()
_cached: tuple[tuple[str, int], np.ndarray] | None = None
WINDOW_SAMPLE = 10_000_000  # voxels the intensity window is estimated from (all of them in smaller volumes)


def _volume(path: Path, max_pixels: int) -> np.ndarray:
    """The canonical volume as uint8 (z, rows, columns), windowed once and kept for the next slices. Memory: the
    stored voxels while they are read, one float32 copy, the uint8 result; never two volumes."""
    global _cached
    key = (str(path), path.stat().st_mtime_ns)
    if _cached is not None and _cached[0] == key:
        return _cached[1]
    _cached = None  # never two volumes at once
    volume_shape(path, max_pixels)
    try:
        nib = _nibabel()
        data = np.asarray(nib.as_closest_canonical(nib.load(str(path))).get_fdata(dtype=np.float32))
    except NiftiError:
        raise
    except Exception as exc:
        raise NiftiError(f"unreadable NIfTI voxels ({exc.__class__.__name__}: {exc})") from exc
    data = np.nan_to_num(data.reshape(data.shape[:3]), copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    step = max(1, data.size // WINDOW_SAMPLE)
    lo, hi = (float(v) for v in np.percentile(data.reshape(-1)[::step], [0.5, 99.5]))
    if hi <= lo:
        scaled = np.zeros(data.shape, np.uint8)
    else:  # in place: no second float copy of the volume
        data -= lo
        data *= 255.0 / (hi - lo)
        data += 0.5
        scaled = np.clip(data, 0, 255, out=data).astype(np.uint8)
    del data
    # (x, y, z) in RAS+ -> (z, rows, columns): anterior at the top, the patient's right on the image's left.
    display = np.ascontiguousarray(np.transpose(scaled, (2, 1, 0))[:, ::-1, ::-1])
    _cached = (key, display)
    return display


def read_slice(path: Path, index: int | None, max_pixels: int) -> np.ndarray:
    """Axial slice `index` (from 1) of a volume as uint8 H x W; a volume of one slice needs no index."""
    with _lock:
        volume = _volume(path, max_pixels)
    if index is None:
        if volume.shape[0] != 1:
            raise NiftiError(
                f"NIfTI volume of {volume.shape[0]} slices: score its folder, or give its path to predict(); "
                "both list it slice by slice"
            )
        index = 1
    if index > volume.shape[0]:
        raise NiftiError(f"slice {index} asked, the volume has {volume.shape[0]}")
    return volume[index - 1].copy()  # the volume may be replaced by the next thread's


def read_nifti_slice(
    path: Path, index: int | None, max_pixels: int
) -> tuple[np.ndarray, dict[str, str | int | None]]:
    """read_slice and its series tags: the volume is the series (mri44.predictions fills its path as the series
    key), the slice number its instance number."""
    return read_slice(path, index, max_pixels), {
        "instance_number": index or 1,
        "series_description": "NIfTI volume",
    }
