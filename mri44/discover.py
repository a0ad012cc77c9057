"""Finding image files under a folder: recursive, case-insensitive extensions, hidden entries skipped, in a
stable sorted order. Symlinks are followed once: the real tree is walked first and links after it, so a file
reachable both by its class folder and by a link with another name (`ln -s "Glioblastoma T1" latest`) is listed
once, under its class folder, and the link is reported as a duplicate path (loops cannot recurse forever)."""

from __future__ import annotations

import os
from pathlib import Path

from mri44.dicom import has_preamble
from mri44.errors import InputNotFoundError
from mri44.imageio import is_image_path

# Written into every folder of metric tables we produce: such folders are our outputs, never inputs, so a
# metrics folder left inside the scored folder is not scored on the next run.
OUTPUT_MARKER = ".mri44-outputs"
# The reason find_images gives for a folder it could not open: callers that must not go on without it (training)
# pick these out of `skipped`.
UNLISTABLE = "folder cannot be listed"


def our_outputs(folder: Path) -> set[str]:
    """The files an mri44 output folder's marker lists: what we wrote there (metric tables, the confusion
    heat map), never inputs. Only those are passed over: a stray or empty marker hides no image (it hid whole
    folders, silently)."""
    try:
        return set((folder / OUTPUT_MARKER).read_text(encoding="utf-8", errors="replace").split())
    except (FileNotFoundError, IsADirectoryError):  # no marker, the usual case
        return set()  # (a folder that cannot be searched raises here, and is reported as such)


def find_images(root: str | os.PathLike[str], skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """All image-named files below root, sorted by their path relative to root; the files our own output folders'
    OUTPUT_MARKER lists are skipped. When `skipped` is given, every other file, every folder that could not be
    listed and every link to something already listed is appended to it as (path relative to root, reason), so
    callers can say what they left out."""
    root = Path(root)
    found: list[Path] = []
    seen_dirs: dict[tuple[int, int], Path] = {}
    seen_files: dict[tuple[int, int], Path] = {}
    links: list[Path] = []  # symlinked entries, taken after the real tree

    def note(path: Path, reason: str) -> None:
        if skipped is not None:
            skipped.append((path.relative_to(root).as_posix(), reason))

    def already(key: tuple[int, int], seen: dict[tuple[int, int], Path], path: Path) -> bool:
        if key in seen:
            if path != seen[key]:
                note(path, f"duplicate path of {seen[key].relative_to(root).as_posix() or '.'} (a link)")
            return True
        seen[key] = path
        return False

    def add_file(path: Path) -> None:
        try:
            st = path.stat()
        except OSError:
            found.append(path)  # a dangling link with an image name is still a file the user asked about
            return
        if not already((st.st_dev, st.st_ino), seen_files, path):
            found.append(path)

    def take(path: Path) -> None:
        """A file: listed when named like an image, or when extension-less and DICOM; else noted as skipped."""
        if is_image_path(path.name) or ("." not in path.name and has_preamble(path)):
            add_file(path)
        else:
            note(path, f"not an image type ({path.suffix.lower() or 'no extension'})")

    def walk(folder: Path) -> None:
        try:
            st = folder.stat()
            if already((st.st_dev, st.st_ino), seen_dirs, folder):
                return
            ours = our_outputs(folder) if folder != root else set()
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:  # the marker check fails alike when the folder cannot be searched
            note(folder, f"{UNLISTABLE} ({exc.strerror or exc})")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.name in ours:
                note(path, f"written by mri44 (listed in {OUTPUT_MARKER}): not an input")
                continue
            try:
                if entry.is_symlink():
                    links.append(path)
                elif entry.is_dir():
                    walk(path)
                else:
                    take(path)
            except OSError:
                if is_image_path(entry.name):
                    found.append(path)

    walk(root)
    while links:  # links found while walking the linked folders join the queue
        batch, links[:] = sorted(links), []
        for path in batch:
            if path.is_dir():
                walk(path)
            elif path.exists() or is_image_path(path.name):  # a dangling link counts when named like an image
                take(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def require_folder(path: Path, what: str) -> Path:
    """path, when it is a folder; else one InputNotFoundError naming it (`what`: "input folder", "data folder")."""
    if not path.is_dir():
        raise InputNotFoundError(f"{what} {path} does not exist or is not a folder")
    return path
