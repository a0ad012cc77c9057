"""DICOM input (the dicom extra: pip install -e '.[dicom]', pydicom): files named .dcm/.dicom, and files without
an extension that carry the DICOM preamble ("DICM" at byte 128).

Pixels become what a radiologist's viewer shows: the modality LUT (rescale slope and intercept) applied, then the
file's own window (centre/width, first pair when several) or, without one, the image's min-max range, mapped to
0..255; MONOCHROME1 (bright = low values) inverted. A multi-frame file is scored per frame: the scorer lists it as
`file.dcm#frame=K` (K from 1), one row per frame.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
FRAME = re.compile(r"^(?P<file>.+)#frame=(?P<frame>[1-9][0-9]*)$")


class DicomError(Exception):
    """Why a DICOM file could not be read (missing pydicom, missing codec, no pixels)."""


def has_preamble(path: str | os.PathLike[str]) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_path(path: str | os.PathLike[str]) -> bool:
    """A name that ends .dcm/.dicom, or an extension-less file with the DICOM preamble."""
    p = Path(path)
    return p.suffix.lower() in DICOM_EXTENSIONS or (p.suffix == "" and has_preamble(p))


def is_dicom_bytes(data: np.ndarray) -> bool:
    return data.size >= 132 and data[128:132].tobytes() == b"DICM"


def split_frame(path: str | os.PathLike[str]) -> tuple[Path, int | None]:
    """`x.dcm#frame=3` -> (x.dcm, 3) when x.dcm exists and the literal name does not; else (path, None)."""
    p = Path(path)
    match = FRAME.match(str(p))
    if match and not p.exists() and Path(match["file"]).exists():
        return Path(match["file"]), int(match["frame"])
    return p, None


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:
        raise DicomError("DICOM input needs pydicom: pip install -e '.[dicom]'") from exc
    return pydicom


def frame_count(path: Path) -> int:
    """NumberOfFrames from the header alone (no pixel data read); 1 when absent or unreadable."""
    try:
        ds = _pydicom().dcmread(path, stop_before_pixels=True, force=True)
        return max(1, int(getattr(ds, "NumberOfFrames", 1) or 1))
    except (
        Exception
    ):  # no pydicom, or an unreadable header: the file's error row comes when its pixels are read
        return 1


def expand_frames(paths: list[Path]) -> list[Path]:
    """One entry per frame for multi-frame DICOM files (`x.dcm#frame=K`), every other path as it is."""
    out: list[Path] = []
    for path in paths:
        # Only a regular file is opened to count frames (a FIFO named x.dcm would block); others keep one row,
        # which becomes their error row when read.
        n = frame_count(path) if is_dicom_path(path) and path.is_file() else 1
        out.extend([path] if n == 1 else [Path(f"{path}#frame={k}") for k in range(1, n + 1)])
    return out


def _window(values: np.ndarray, ds) -> np.ndarray:
    """Modality values -> 0..255 through the file's window, or its min-max range."""
    centre, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if centre is not None and width is not None:
        c = float(centre[0] if hasattr(centre, "__len__") and not isinstance(centre, str) else centre)
        w = float(width[0] if hasattr(width, "__len__") and not isinstance(width, str) else width)
        lo, hi = c - w / 2, c + w / 2
    else:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.clip((values - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def decode_dicom(data: bytes | np.ndarray | Path, frame: int | None = None) -> np.ndarray:
    """uint8 HxW (or HxWx3 RGB) of one frame, as a viewer shows it; raises DicomError with the reason."""
    pydicom = _pydicom()
    source = (
        data
        if isinstance(data, Path)
        else io.BytesIO(data.tobytes() if isinstance(data, np.ndarray) else data)
    )
    try:
        ds = pydicom.dcmread(source, force=True)
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = (
            getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) if "ds" in locals() else None
        )
        if syntax is not None and getattr(syntax, "is_compressed", False):
            raise DicomError(
                f"pixel data compressed as {syntax.name}, which needs a codec that is not installed "
                "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm)"
            ) from exc
        raise DicomError(f"no readable pixel data ({exc.__class__.__name__}: {exc})") from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        if frame is None:
            raise DicomError(
                f"multi-frame DICOM ({frames} frames): score it with the local engine, frame by frame"
            )
        if frame > frames:
            raise DicomError(f"frame {frame} asked, the file has {frames}")
        pixels = pixels[frame - 1]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3 and pixels.shape[-1] == 3:  # colour (pydicom converts YBR to RGB)
        return pixels.astype(np.uint8) if pixels.dtype == np.uint8 else _window(pixels.astype(np.float64), ds)
    values = pixels.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1) or 1) + float(
        getattr(ds, "RescaleIntercept", 0) or 0
    )
    image = _window(values, ds)
    return 255 - image if photometric == "MONOCHROME1" else image
