"""The image size a compressed codestream claims in its own header, read without decoding anything.

A decoder allocates what the codestream claims, whatever the container says: a 764-byte DICOM file whose header
says 8 x 8 held a JPEG-LS codestream claiming 36000 x 36000, and GDCM aborted the whole process allocating it. The
readers compare these sizes with the container's and with --max-pixels before any codec runs (mri44.dicom for
DICOM frames; mri44.imageio for JPEG files, where Pillow gives up on headers libjpeg accepts).
"""

from __future__ import annotations

# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic): the frame header that holds the
# image's height and width (JPEG-LS's SOF55 has the same layout). 0xC4 (Huffman tables), 0xC8 (reserved) and 0xCC
# (arithmetic conditioning) are not frames.
_JPEG_FRAMES = (frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}) | {0xF7}  # 0xF7: JPEG-LS (SOF55)


def jpeg_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's first frame header, walking the marker segments as libjpeg does (bytes
    between segments skipped, fill bytes allowed); None when no frame header comes before the first scan.

    Our own reader, because Pillow gives up on headers libjpeg accepts (a short Adobe APP14 segment): the
    --max-pixels bound must hold whatever Pillow makes of the file."""
    if not raw.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 1 < len(raw):
        if raw[i] != 0xFF:  # libjpeg skips stray bytes to the next marker
            i += 1
            continue
        marker = raw[i + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:  # fill byte, TEM, RSTn, SOI: no length
            i += 1 if marker == 0xFF else 2
            continue
        if marker in (0xD9, 0xDA) or i + 4 > len(raw):  # end of image or scan before any frame header
            return None
        if marker in _JPEG_FRAMES:
            if i + 9 > len(raw):
                return None
            height, width = (
                int.from_bytes(raw[i + 5 : i + 7], "big"),
                int.from_bytes(raw[i + 7 : i + 9], "big"),
            )
            return (width, height) if width and height else None  # height 0 (set later by DNL): unknown
        i += 2 + int.from_bytes(raw[i + 2 : i + 4], "big")
    return None


def j2k_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG 2000 codestream's SIZ segment (the image area: Xsiz - XOsiz by Ysiz - YOsiz),
    in a bare codestream or inside a JP2 file; None when there is none."""
    start = raw.find(b"\xff\x4f\xff\x51")  # SOC, then SIZ: the main header always opens so
    if start < 0 or start + 24 > len(raw):
        return None
    siz = raw[start + 8 : start + 24]
    xsiz, ysiz, xo, yo = (int.from_bytes(siz[i : i + 4], "big") for i in (0, 4, 8, 12))
    width, height = xsiz - xo, ysiz - yo
    return (width, height) if width > 0 and height > 0 else None


def codestream_size(raw: bytes) -> tuple[int, int] | None:
    """(width, height) a JPEG, JPEG-LS or JPEG 2000 codestream claims; None when it has no readable size."""
    return jpeg_size(raw) if raw.startswith(b"\xff\xd8") else j2k_size(raw)
