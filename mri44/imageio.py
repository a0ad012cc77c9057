"""Image decoding that every stage shares.

OpenCV decodes from bytes (np.fromfile + imdecode) so that paths with spaces, '+', parentheses and non-ASCII
characters work on every platform. Every failure, whatever its cause, surfaces as ImageDecodeError naming the
file, so callers can record it per file and carry on.
"""

from __future__ import annotations

import io
import os
import re
import stat
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from mri44.codestreams import jpeg_size
from mri44.dicom import DICOM_EXTENSIONS, DicomError, decode_dicom, is_dicom_bytes
from mri44.errors import MRI44Error
from mri44.limits import MAX_PIXELS, byte_limit
from mri44.nifti import is_nifti_path

# Decoding allocates width x height x channels bytes whatever the file size: a 2.6 MB PNG can claim 30000 x 30000
# (2.7 GB of pixels). Dimensions are read from the header first and such files refused (mri44.limits).

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".dib", ".tif", ".tiff", ".pgm", ".ppm", ".pbm"}
    | {".gif", ".jp2", ".j2k"}  # OpenCV >= 4.11 decodes these; an older one makes them per-file error rows
)


class ImageDecodeError(MRI44Error):
    """A file that cannot be turned into an image; the message names the file and the reason."""

    def __init__(self, path: object, reason: str) -> None:  # a path, or a mri44.readers.Item
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def file_error(exc: Exception) -> str:
    """The one-bad-file-becomes-one-error-row rule, said once for every engine (local, on-device, Ray): the
    reason a file failed, for its row's `error` column. Our own refusals give their reason; anything else that
    went wrong with this one file keeps its type in the text, and the run goes on."""
    return exc.reason if isinstance(exc, ImageDecodeError) else f"{exc.__class__.__name__}: {exc}"


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """By name: a known image extension, a DICOM one (extension-less DICOM: mri44.dicom.has_preamble), or a NIfTI
    volume (.nii, .nii.gz)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS | DICOM_EXTENSIONS or is_nifti_path(path)


def _jpeg_is_truncated(raw: bytes) -> bool:
    """libjpeg silently fills a truncated JPEG with grey; a missing end-of-image marker tells us it happened.

    The end marker must follow the last start-of-scan marker (entropy-coded data never holds 0xFFD9, and an
    embedded thumbnail's end marker comes before the main scan), so bytes appended after the end marker by
    scanners and phones are accepted while a cut-off scan is not.
    """
    if len(raw) < 4 or not raw.startswith(b"\xff\xd8"):
        return False
    last_scan = raw.rfind(b"\xff\xda")
    return last_scan < 0 or raw.rfind(b"\xff\xd9") < last_scan  # no scan at all: cut off in the header


def header_size(raw: bytes) -> tuple[int, str] | None:
    """(pixel count, 'W x H') from the file's header without decoding pixels; None when neither our JPEG reader
    nor Pillow can tell (check_encoded then refuses the file: no decoder runs on a size nobody read)."""
    if raw.startswith(b"\xff\xd8"):
        size = jpeg_size(raw)
        return None if size is None else (size[0] * size[1], f"{size[0]} x {size[1]}")
    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
            return width * height, f"{width} x {height}"
    except Image.DecompressionBombError as exc:  # Pillow's own refusal on open, beyond twice its limit
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(claimed.group(1)) if claimed else 2 * (Image.MAX_IMAGE_PIXELS or 0) + 1
        return pixels, f"{pixels:,}"
    except Exception:  # not a format Pillow knows
        return None


def check_encoded(buf: np.ndarray, source: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> None:
    """What is refused before any decoder runs (every decoder: OpenCV here, nvJPEG in the scorer): empty files,
    truncated JPEGs, headers that claim more than max_pixels pixels, and files whose size no header reader could
    tell (the bound is enforced by reading the size, never skipped because the reading failed)."""
    if buf.size == 0:
        raise ImageDecodeError(source, "empty file")
    raw = buf.tobytes()  # one copy for both header checks
    if _jpeg_is_truncated(raw):
        raise ImageDecodeError(source, "truncated JPEG (no end-of-image marker)")
    claimed = header_size(raw)
    if claimed is None:
        raise ImageDecodeError(
            source, "not an image this tool can read (no image size in its header): not decoded"
        )
    if claimed[0] > max_pixels:
        raise ImageDecodeError(
            source, f"image claims {claimed[1]} pixels, over the limit of {max_pixels:,} (--max-pixels)"
        )


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Deeper images (16-bit, float) are rescaled by their own range, as MRI viewers do."""
    if image.dtype == np.uint8:
        return image
    img = image.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        img = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    return np.clip((img - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def decode_bytes(
    data: bytes | np.ndarray, source: str | os.PathLike[str] = "<bytes>", max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode to uint8, either HxW (greyscale) or HxWx3 (RGB order); alpha is composited onto black.

    Files whose header claims more than max_pixels are refused before any pixel is allocated.
    """
    buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray) else data
    if is_dicom_bytes(buf):
        try:
            return decode_dicom(buf, None, max_pixels)
        except DicomError as exc:
            raise ImageDecodeError(source, str(exc)) from exc
    check_encoded(buf, source, max_pixels)
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. a header that announces more pixels than OpenCV allows
        raise ImageDecodeError(source, f"OpenCV could not decode it ({exc.err or exc})") from exc
    if image is None:
        raise ImageDecodeError(source, "not an image OpenCV can decode (corrupt or unsupported format)")
    if image.size == 0 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageDecodeError(source, "image has no pixels")
    image = to_uint8(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image
    if image.shape[2] == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        image = (image[:, :, :3].astype(np.float32) * alpha + 0.5).astype(np.uint8)
    elif image.shape[2] != 3:
        raise ImageDecodeError(source, f"unsupported channel count {image.shape[2]}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_raster(path: Path, member: int | None, max_pixels: int) -> tuple[np.ndarray, dict[str, str]]:
    """The raster reader of mri44.readers: a picture file's pixels (decode_bytes) and, from the same read, the
    SHA-256 of its bytes (what seen_in_training matches; hashing the file again would cost a second read and could
    hash other bytes than were decoded). No series tags."""
    from mri44.fingerprint import sha256_of

    data = read_file(path, max_pixels)
    return decode_bytes(data, path, max_pixels), {"sha256": sha256_of(data)}


def check_file(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> int:
    """Refuse, before a byte is read, what is not a regular file (a FIFO named x.jpg would block the run forever)
    or is larger than any image within max_pixels can be (8 bytes per pixel, plus headers); returns that limit."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ImageDecodeError(path, "not a regular file (a FIFO, device or socket): not read")
    limit = byte_limit(max_pixels)
    if info.st_size > limit:
        raise ImageDecodeError(
            path,
            f"file of {info.st_size:,} bytes is larger than an image within --max-pixels can be: not read",
        )
    return limit


def read_file(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A file's bytes as uint8, at most check_file's limit; a file that cannot be read is an ImageDecodeError (one
    error row), not a crash or a hang."""
    limit = check_file(path, max_pixels)
    try:
        data = np.fromfile(path, dtype=np.uint8, count=limit + 1)
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if data.size > limit:  # it grew after the check
        raise ImageDecodeError(path, "file is larger than an image within --max-pixels can be: not read")
    return data
