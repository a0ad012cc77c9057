import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
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
    (tmp_path / "out" / OUTPUT_MARKER).write_text("confusion.png\n")  # as metrics.write_tables lists it
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
        ("out/confusion.png", f"written by mri44 (listed in {OUTPUT_MARKER}): not an input"),
    ]


def test_a_link_to_a_class_folder_lists_each_file_once_under_its_class(tmp_path: Path) -> None:
    """`ln -s "Glioblastoma T1" 00_latest` sorts first; its files are still listed under their class folder
    (which labels them) and the link is reported as a duplicate path."""
    (tmp_path / "Glioblastoma T1").mkdir()
    (tmp_path / "Glioblastoma T1" / "a.png").write_bytes(b"x")
    (tmp_path / "00_latest").symlink_to("Glioblastoma T1")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "b.png").symlink_to(tmp_path / "Glioblastoma T1" / "a.png")
    skipped: list[tuple[str, str]] = []
    found = find_images(tmp_path, skipped)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["Glioblastoma T1/a.png"]
    assert sorted(skipped) == [
        ("00_latest", "duplicate path of Glioblastoma T1 (a link)"),
        ("other/b.png", "duplicate path of Glioblastoma T1/a.png (a link)"),
    ]


def _without_read_capability(code: str) -> subprocess.CompletedProcess[str]:
    """Run Python code as this user minus CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (root then obeys file modes,
    as any user does), so unreadable folders are tested for real, not by mocking os.scandir."""
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop the capability to read any folder")
        caps = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def locked_tree(tmp_path: Path):
    """Two classes with an image each, plus a nested folder nobody may open (000) and one that can be listed
    but not searched (r--: the marker check fails, where the old code dropped the folder silently)."""
    for name in ("A T1", "B T2"):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "ok.png"), np.full((16, 16), 100, np.uint8))
    for name, mode in (("closed", 0o000), ("listonly", 0o444)):
        (tmp_path / "A T1" / name).mkdir()
        cv2.imwrite(str(tmp_path / "A T1" / name / "hidden.png"), np.zeros((16, 16), np.uint8))
        (tmp_path / "A T1" / name).chmod(mode)
    yield tmp_path
    for name in ("closed", "listonly"):
        (tmp_path / "A T1" / name).chmod(0o755)


def test_unreadable_folders_are_reported_for_real(locked_tree: Path) -> None:
    code = (
        "import json; from mri44.discover import find_images; s = []; "
        f"f = find_images({str(locked_tree)!r}, s); print(json.dumps([len(f), sorted(s)]))"
    )
    result = _without_read_capability(code)
    assert result.returncode == 0, result.stderr
    found, skipped = json.loads(result.stdout)
    assert found == 2
    assert skipped == [
        ["A T1/closed", "folder cannot be listed (Permission denied)"],
        ["A T1/listonly", "folder cannot be listed (Permission denied)"],
    ]


def test_training_scan_lists_unreadable_folders_and_refuses_an_unreadable_class(locked_tree: Path) -> None:
    code = (
        "import json; from pathlib import Path; from mri44.preprocess import PreprocessSpec; "
        "from mri44.stages.train.dataset import scan_dataset; "
        f"d = scan_dataset(Path({str(locked_tree)!r}), PreprocessSpec(size=32), workers=1); "
        "print(json.dumps([d.manifest.height, d.failures.rows()]))"
    )
    result = _without_read_capability(code)
    assert result.returncode == 0, result.stderr
    rows, failures = json.loads(result.stdout)
    assert rows == 2
    assert sorted(tuple(f) for f in failures) == [
        ("A T1/closed", "folder cannot be listed (Permission denied)"),
        ("A T1/listonly", "folder cannot be listed (Permission denied)"),
    ]
    (locked_tree / "B T2").chmod(0o000)
    try:
        result = _without_read_capability(code)
    finally:
        (locked_tree / "B T2").chmod(0o755)
    assert result.returncode != 0
    assert "SettingError: class folder" in result.stderr and "B T2: folder cannot be listed" in result.stderr


def test_an_extension_less_fifo_is_never_opened(tmp_path: Path) -> None:
    """Extension-less files are sniffed for the DICOM preamble; opening a FIFO to do so blocked discovery forever."""
    import threading

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"x")
    os.mkfifo(tmp_path / "a" / "pipe")
    found: list[list[Path]] = []
    worker = threading.Thread(target=lambda: found.append(find_images(tmp_path)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "find_images blocked on a FIFO"
    assert [p.name for p in found[0]] == ["x.png"]


def test_a_stray_marker_file_hides_no_image(tmp_path: Path) -> None:
    """A `.mri44-outputs` file left in an input folder made every image there vanish silently (issue 30). Only
    the files a marker lists (what mri44 wrote there) are passed over, each noted."""
    from mri44.discover import OUTPUT_MARKER, find_images

    folder = tmp_path / "A T1"
    folder.mkdir()
    for name in ("a.png", "b.png", "confusion.png"):
        cv2.imwrite(str(folder / name), np.full((16, 16), 100, np.uint8))
    (folder / OUTPUT_MARKER).write_text("")  # stray, empty
    assert [p.name for p in find_images(tmp_path)] == ["a.png", "b.png", "confusion.png"]
    (folder / OUTPUT_MARKER).write_text("summary.csv\nconfusion.png\n")  # a metrics folder's own list
    skipped: list[tuple[str, str]] = []
    assert [p.name for p in find_images(tmp_path, skipped)] == ["a.png", "b.png"]
    assert skipped == [("A T1/confusion.png", f"written by mri44 (listed in {OUTPUT_MARKER}): not an input")]


def test_a_missing_input_folder_is_one_error_type_everywhere(tmp_path: Path) -> None:
    """Scoring (local and Ray listing) and training refuse a missing folder with one type and wording (issue 31)."""
    import mri44
    from mri44.errors import InputNotFoundError, MRI44Error
    from mri44.stages.score.ray_engine import list_inputs
    from mri44.stages.train.dataset import class_folders

    missing = tmp_path / "nope"
    calls = (
        lambda: mri44.score(missing, out=None),
        lambda: list_inputs(str(missing)),
        lambda: class_folders(missing),
    )
    for call in calls:
        with pytest.raises(InputNotFoundError, match="does not exist or is not a folder") as caught:
            call()
        assert isinstance(caught.value, MRI44Error) and isinstance(caught.value, FileNotFoundError)
