"""DICOM input (the dicom extra: pip install 'mri44[dicom]', pydicom): files named .dcm/.dicom, and files without
an extension that carry the DICOM preamble ("DICM" at byte 128).

Pixels become what a radiologist's viewer shows (viewer_pixels: pydicom's modality LUT, then its VOI LUT or
window with the file's VOILUTFunction, else the image's min-max range, mapped to 0..255; MONOCHROME1 inverted). A
multi-frame file is scored per frame: mri44.readers lists frame K (from 1) as its own item, one row each, with the
frame number in the predictions' `frame` column.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mri44.errors import import_extra
from mri44.limits import MAX_PIXELS, byte_limit

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})


class DicomError(Exception):
    """Why a DICOM file could not be read (missing pydicom, missing codec, no pixels)."""


def has_preamble(path: str | os.PathLike[str]) -> bool:
    """ "DICM" at byte 128 of a regular file (anything else, a FIFO above all, is never opened: it would block)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
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


def _pydicom():
    return import_extra("pydicom", "dicom", "DICOM input", DicomError)


DEFLATED_UID = b"1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian


def _deflated_start(head: bytes) -> int | None:
    """Where a deflated data set starts (after the preamble and the file meta group, whose length its first
    element gives), or None when the file is not deflated. A file that names the deflated syntax where no meta
    group length says where its data set starts is refused: nothing can bound what pydicom would inflate."""
    if DEFLATED_UID not in head:
        return None
    if head[128:132] == b"DICM" and head[132:138] == b"\x02\x00\x00\x00UL":
        start = 144 + int.from_bytes(head[140:144], "little")
        if DEFLATED_UID in head[144:start]:
            return start
        if start <= len(head):
            return None  # the UID is elsewhere (in the data set, say): the data set is not deflated
    raise DicomError("deflated DICOM without a readable file meta group: not read")


def check_inflated_size(source: Path | io.BytesIO, limit: int) -> None:
    """Refuse a deflated data set that inflates to more than `limit` bytes (an uncompressed file's limit),
    counted while streaming, a megabyte at a time, before pydicom inflates all of it in one piece: a 195 KB file
    inflated to 2.5 GB in memory, for its header alone."""
    import zlib

    with source.open("rb") if isinstance(source, Path) else io.BytesIO(source.getvalue()) as fp:
        head = fp.read(1 << 16)
        start = _deflated_start(head)
        if start is None:
            return
        fp.seek(start)
        inflate, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while (chunk := fp.read(1 << 20)) and not inflate.eof:
            while chunk and not inflate.eof:
                try:
                    out = inflate.decompress(chunk, 1 << 20)
                except zlib.error as exc:
                    raise DicomError(f"deflated data set is corrupt ({exc})") from None
                total += len(out)
                if total > limit:
                    raise DicomError(
                        f"deflated data set inflates to more than {limit:,} bytes, the most an image within "
                        "--max-pixels can take: not read"
                    )
                if not out and inflate.unconsumed_tail == chunk:
                    break  # no progress: the rest is not deflate data; pydicom will say what it makes of it
                chunk = inflate.unconsumed_tail


def read_header(source: Path | io.BytesIO, file_size: int, max_pixels: int):
    """The dataset without its pixel data, once its claims are bounded: rows x columns within max_pixels, and
    NumberOfFrames no more than the file can hold (a frame of native pixels takes at least rows x columns x
    bytes per sample; a compressed frame at least one 8-byte item header). A 648-byte file claiming 5,000,000
    frames is refused here, before a row per frame is listed or a byte of pixels decoded."""
    pydicom = _pydicom()
    check_inflated_size(source, byte_limit(max_pixels))
    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True, force=True)
        rows, columns = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        bits = int(getattr(ds, "BitsAllocated", 8) or 8)
    except Exception as exc:  # pydicom raises many kinds on a malformed header
        raise DicomError(f"unreadable DICOM header ({exc.__class__.__name__}: {exc})") from exc
    if rows * columns > max_pixels:
        raise DicomError(
            f"DICOM claims {columns} x {rows} pixels per frame, over the limit of {max_pixels:,} (--max-pixels)"
        )
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    packed = bool(getattr(syntax, "is_compressed", False) or getattr(syntax, "is_deflated", False))
    # A lower bound on a frame's bytes: one sample per pixel (YBR_FULL_422 holds two, RGB three), 8 bytes per
    # compressed frame (its item header); a deflated data set can hold anything, so only that.
    frame_bytes = 8 if packed else max(1, rows * columns * bits // 8)
    if frames < 1 or frames * frame_bytes > file_size:
        raise DicomError(
            f"DICOM claims {frames:,} frames of {columns} x {rows}, more than its {file_size:,} bytes can hold"
        )
    return ds


def tags_of(ds: Any) -> dict[str, str | int | None]:
    """Where a slice sits in a study, for a series-level answer (the predictions' tag columns,
    mri44.predictions.TAG_SCHEMA), from a header. Never the patient's name, ID or birth date: those stay in the
    files and never reach a predictions table."""
    number = ds.get("InstanceNumber")
    try:
        instance = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        instance = None
    image_type = ds.get("ImageType")
    multi = isinstance(image_type, Sequence) and not isinstance(image_type, str)  # pydicom's MultiValue
    return {
        "study_uid": str(ds.get("StudyInstanceUID") or "") or None,
        "series_uid": str(ds.get("SeriesInstanceUID") or "") or None,
        "instance_number": instance,
        "series_description": str(ds.get("SeriesDescription") or "") or None,
        "modality": str(ds.get("Modality") or "").strip().upper() or None,
        "image_type": "\\".join(map(str, image_type)) if multi else (str(image_type) if image_type else None),
        "body_part": str(ds.get("BodyPartExamined") or "").strip().upper() or None,
    }


def dicom_tags(source: bytes) -> dict[str, str | int | None] | None:
    """tags_of a DICOM file's bytes (a file read from a URL); None when its header cannot be read."""
    try:
        return tags_of(read_header(io.BytesIO(source), len(source), MAX_PIXELS))
    except Exception:  # a header pydicom cannot read: the row keeps null tags (its pixels say why, if at all)
        return None


PIXEL_ELEMENTS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
NO_IMAGE = "no pixel data (a DICOM object that holds no image: a DICOMDIR, a report, a presentation state)"


def frame_count(path: Path, max_pixels: int) -> int:
    """NumberOfFrames from the bounded header (no pixel data read); 0 for an object that holds no pixel data at
    all (listed as skipped, not as an error row); 1 when the header cannot be trusted, and that one row then
    carries the file's error."""
    try:
        header = read_header(path, path.stat().st_size, max_pixels)
        # Whether a pixel data element follows the header: its value is deferred, never read.
        whole = _pydicom().dcmread(path, force=True, defer_size=256)
        if not any(name in whole for name in PIXEL_ELEMENTS):
            return 0
        return max(1, int(getattr(header, "NumberOfFrames", 1) or 1))
    except (DicomError, OSError, ValueError, TypeError, AttributeError, KeyError):
        return 1


def _to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.clip((values - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def _voi_output_range(ds) -> tuple[float, float]:
    """The range pydicom's VOI transforms map into (PS3.3 C.11.2): a VOI LUT's 0..2^bits-1, or for a window the
    modality range of the stored bit depth, rescaled."""
    if ds.get("VOILUTSequence") and ds.get("WindowCenter") is None:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(getattr(ds, "PixelRepresentation", 0) or 0) == 0:
        lo, hi = 0.0, float(2 ** int(ds.BitsStored) - 1)
    else:
        lo, hi = -float(2 ** (int(ds.BitsStored) - 1)), float(2 ** (int(ds.BitsStored) - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return lo, hi


def viewer_pixels(pixels: np.ndarray, ds) -> np.ndarray:
    """Stored pixels -> what a PACS viewer shows, as uint8: pydicom's modality LUT (rescale, or a Modality LUT
    Sequence), then its VOI transform (the file's VOI LUT Sequence, else its first window with VOILUTFunction
    LINEAR, LINEAR_EXACT or SIGMOID) mapped to 0..255; without any VOI, the image's own min-max range.
    MONOCHROME1 (bright = low values) is inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = np.asarray(apply_modality_lut(pixels, ds), np.float64)
    if not np.isfinite(
        values
    ).all():  # a NaN or infinite RescaleSlope / Intercept: a blank frame scored as ok
        raise DicomError(
            f"its modality LUT gives non-finite values (RescaleSlope {ds.get('RescaleSlope')!r}, "
            f"RescaleIntercept {ds.get('RescaleIntercept')!r}): no image to score"
        )
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if ds.get("VOILUTSequence") or has_window:
        try:
            voi = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), np.float64)
            image = _to_uint8(voi, *_voi_output_range(ds))
        except (
            ValueError,
            TypeError,
            AttributeError,
            IndexError,
            KeyError,
        ) as exc:  # a malformed window or LUT
            raise DicomError(f"the file's VOI LUT or window cannot be applied ({exc})") from exc
    else:
        image = _to_uint8(values, float(values.min()), float(values.max()))
    return 255 - image if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1" else image


def _syntax_of(ds):
    """The transfer syntax of a dataset read without file meta, from the encoding pydicom found it in."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def decode_dicom(data: bytes | np.ndarray, frame: int | None, max_pixels: int) -> np.ndarray:
    """uint8 HxW (or HxWx3 RGB) of one frame of a DICOM file's bytes, as a viewer shows it (a file read from a URL);
    raises DicomError with the reason."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else data
    return _decode(io.BytesIO(raw), len(raw), frame, max_pixels)[0]


def read_frame(
    path: Path, frame: int | None, max_pixels: int
) -> tuple[np.ndarray, dict[str, str | int | None]]:
    """One frame of a DICOM file as a viewer shows it, and the file's series tags from the same header read. A
    file that is one image is read into memory once, so its bytes' SHA-256 (seen_in_training) comes with it."""
    if frame is not None:
        pixels, ds = _decode(path, path.stat().st_size, frame, max_pixels)
        return pixels, tags_of(ds)
    from mri44.fingerprint import sha256_of

    data = path.read_bytes()  # read_item checked the file's size against max_pixels first
    pixels, ds = _decode(io.BytesIO(data), len(data), None, max_pixels)
    return pixels, {**tags_of(ds), "sha256": sha256_of(data)}


def _decode(
    source: Path | io.BytesIO, size: int, frame: int | None, max_pixels: int
) -> tuple[np.ndarray, Any]:
    """(uint8 pixels of one frame, the header dataset). Only that frame is decoded (pydicom's pixel_array with an
    index seeks to its bytes or fragments), so a file of N frames scored row by row costs N frames, not N files.
    Compressed frames go through a codec, in a worker process (decode_compressed)."""
    from pydicom.pixels import pixel_array

    ds = read_header(source, size, max_pixels)
    if "Rows" not in ds or "Columns" not in ds:  # a report, a DICOMDIR: read_image() says so in one line
        raise DicomError(NO_IMAGE)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1 and frame is None:
        raise DicomError(
            f"multi-frame DICOM ({frames} frames): score its folder, or give its path to predict(); "
            "both list it frame by frame"
        )
    if frame is not None and frame > frames:
        raise DicomError(f"frame {frame} asked, the file has {frames}")
    if isinstance(source, io.BytesIO):
        source.seek(0)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    index = None if frames == 1 else (frame or 1) - 1
    if syntax is not None and getattr(syntax, "is_compressed", False) and not syntax.is_deflated:
        from mri44.isolation import DecoderCrashed, run_isolated

        shape = (int(ds.Rows), int(ds.Columns))
        given = source if isinstance(source, Path) else source.getvalue()
        try:
            pixels = run_isolated(decode_compressed, given, index, frames, shape, max_pixels)
        except DecoderCrashed as exc:
            raise DicomError(f"pixel data compressed as {syntax.name}: {exc}") from None
    else:
        try:
            if syntax and not syntax.is_deflated:
                pixels = pixel_array(source, index=index, allow_excess_frames=False)
            else:  # deflated, or without file meta (its syntax from the encoding it was found in): read whole
                whole = _pydicom().dcmread(source, force=True)
                if not syntax:
                    whole.file_meta = _pydicom().dataset.FileMetaDataset()
                    whole.file_meta.TransferSyntaxUID = _syntax_of(whole)
                pixels = pixel_array(whole, index=index, allow_excess_frames=False)
        except Exception as exc:
            raise DicomError(f"no readable pixel data ({exc.__class__.__name__}: {_reason(exc)})") from exc
    if pixels.ndim == 3 and pixels.shape[-1] == 3:  # colour (pydicom converts YBR to RGB)
        if pixels.dtype == np.uint8:
            return pixels, ds
        values = pixels.astype(np.float64)
        return _to_uint8(values, float(values.min()), float(values.max())), ds
    return viewer_pixels(pixels, ds), ds


def _reason(exc: Exception) -> str:
    """pydicom's 'Unable to decode ... by all available plugins:' is followed by one line per codec: keep every
    codec's reason (GDCM's and Pillow's both), not only the last one's."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return exc.__class__.__name__
    return ("; ".join(lines[1:]) if len(lines) > 1 and lines[0].endswith(":") else lines[-1])[:300]


def decode_compressed(
    source: Path | bytes, index: int | None, frames: int, shape: tuple[int, int], max_pixels: int
) -> np.ndarray:
    """In a worker process (mri44.isolation): one compressed frame's stored pixels, decoded by pydicom's codec
    (python-gdcm for JPEG, JPEG-LS, JPEG 2000) once the size its codestream claims is the header's (rows, columns)
    and within max_pixels: a codec allocates what the codestream claims, whatever the header says."""
    from pydicom.encaps import get_frame
    from pydicom.pixels import pixel_array

    from mri44.codestreams import codestream_size

    ds = _pydicom().dcmread(io.BytesIO(source) if isinstance(source, bytes) else source, force=True)
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        fragment = get_frame(ds.PixelData, index or 0, number_of_frames=frames)
    except Exception as exc:
        raise DicomError(
            f"pixel data compressed as {syntax.name}: unreadable frame ({_reason(exc)})"
        ) from None
    claimed = codestream_size(fragment[: 1 << 16])
    if claimed is None and syntax != _pydicom().uid.RLELossless:
        raise DicomError(
            f"pixel data compressed as {syntax.name} has no image size in its codestream: not decoded"
        )
    if claimed is not None and ((claimed[1], claimed[0]) != shape or claimed[0] * claimed[1] > max_pixels):
        raise DicomError(
            f"pixel data compressed as {syntax.name} claims {claimed[0]} x {claimed[1]} pixels, the header "
            f"{shape[1]} x {shape[0]}: not decoded"
        )
    try:
        return pixel_array(ds, index=index, allow_excess_frames=False)
    except Exception as exc:
        raise DicomError(
            f"pixel data compressed as {syntax.name} could not be decoded ({_reason(exc)})"
        ) from None
