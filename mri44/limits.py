"""What one input may cost, said once: every reader honours these, and `--max-pixels` / `--max-frames` set them.

A file's header can claim anything (a 2.6 MB PNG claiming 30000 x 30000 pixels, a 41 KB DICOM claiming 5,000
frames); the limits are checked against the header before a decoder allocates or a row is listed. MRI slices are
far below them.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PIXELS = 50_000_000  # per image: a frame, a slice, a picture
MAX_MEMBERS = (
    1_000  # frames of one DICOM file, or slices of one volume, listed as rows (brain MRI: tens to hundreds)
)
VOLUME_FACTOR = 4  # a NIfTI volume may hold up to 4 x max_pixels voxels (200 M by default; brain MRI: ~15 M)


def byte_limit(max_pixels: int) -> int:
    """The most bytes a file holding an image within max_pixels can take: 8 per pixel, plus headers."""
    return 8 * max_pixels + (1 << 20)


@dataclass(frozen=True)
class Limits:
    max_pixels: int = MAX_PIXELS
    max_members: int = MAX_MEMBERS

    def __post_init__(self) -> None:
        from mri44.errors import SettingError

        if self.max_pixels < 1 or self.max_members < 1:
            raise SettingError(
                f"--max-pixels and --max-frames must be at least 1, got {self.max_pixels} and {self.max_members}"
            )

    @property
    def max_voxels(self) -> int:
        return VOLUME_FACTOR * self.max_pixels
