import os
from pathlib import Path

import pytest

from mri44.discover import OUTPUT_MARKER, find_images


def test_skipped_files_and_unlistable_folders_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("n")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "y.png").write_bytes(b"")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / OUTPUT_MARKER).touch()
    (tmp_path / "out" / "confusion.png").write_bytes(b"")
    real_scandir = os.scandir

    def scandir(path):  # tests run as root, who can list any folder: simulate a permission error
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    skipped: list[tuple[str, str]] = []
    found = find_images(tmp_path, skipped)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/x.png"]
    assert sorted(skipped) == [
        ("a/notes.txt", "not an image type (.txt)"),
        ("locked", "folder cannot be listed (Permission denied)"),
    ]
