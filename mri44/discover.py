"""Finding image files under a folder: recursive, case-insensitive extensions, hidden entries skipped,
symlinked folders followed once (loops cannot recurse forever), in a stable sorted order."""

from __future__ import annotations

import os
from pathlib import Path

from mri44.dicom import has_preamble
from mri44.imageio import is_image_path

# Written into every folder of metric tables we produce: such folders are our outputs, never inputs, so a
# metrics folder left inside the scored folder is not scored on the next run.
OUTPUT_MARKER = ".mri44-outputs"


def find_images(root: str | os.PathLike[str], skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """All image-named files below root, sorted by their path relative to root; our own output folders (marked
    with OUTPUT_MARKER) are skipped. When `skipped` is given, every other file and every folder that could not
    be listed is appended to it as (path relative to root, reason), so callers can say what they left out."""
    root = Path(root)
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()

    def note(path: Path, reason: str) -> None:
        if skipped is not None:
            skipped.append((path.relative_to(root).as_posix(), reason))

    def walk(folder: Path) -> None:
        try:
            st = folder.stat()
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            return
        seen_dirs.add(key)
        if (folder / OUTPUT_MARKER).exists() and folder != root:
            return
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            note(folder, f"folder cannot be listed ({exc.strerror or exc})")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    walk(Path(entry.path))
                elif is_image_path(entry.name) or ("." not in entry.name and has_preamble(entry.path)):
                    found.append(Path(entry.path))  # extension-less files count when they are DICOM
                else:
                    note(
                        Path(entry.path),
                        f"not an image type ({Path(entry.name).suffix.lower() or 'no extension'})",
                    )
            except OSError:
                # A dangling link with an image name is still a file the user asked about: record it.
                if is_image_path(entry.name):
                    found.append(Path(entry.path))

    walk(root)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())
