"""NIfTI volumes: reoriented to canonical, axial slices scored like images (a `slice` column), one volume row,
claims bounded before any voxel is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from mri44.imageio import ImageDecodeError
from mri44.limits import Limits
from mri44.readers import Item, list_items, read_image, read_item
from mri44.stages.score.cli import app

nib = pytest.importorskip("nibabel", reason="NIfTI is an extra: pip install -e '.[nifti]'")


def _slices(n: int = 5) -> list[np.ndarray]:
    """Slices with a bright mark at the top left (orientation) and dark rows at the bottom (the window)."""
    out = []
    for k in range(n):
        image = np.full((20, 24), 40 + 30 * k, np.uint8)
        image[:2, :3] = 255
        image[16:] = 0
        out.append(image)
    return out


def _volume(path: Path, slices: list[np.ndarray], flip_x: bool) -> Path:
    """The slices as a RAS+ volume (display row = anterior at top, patient's right on the left), stored either
    canonically or with its first axis flipped (LAS+), which the reader must undo."""
    data = np.stack([s[::-1, ::-1].T for s in slices], axis=2).astype(np.int16)
    affine = np.eye(4)
    if flip_x:
        data, affine[0, 0], affine[0, 3] = data[::-1], -1.0, data.shape[0] - 1
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.mark.parametrize("flip_x", [False, True])
def test_slices_read_back_as_the_images_they_were_made_from(tmp_path: Path, flip_x: bool) -> None:
    slices = _slices()
    volume = _volume(tmp_path / ("las.nii" if flip_x else "ras.nii.gz"), slices, flip_x)
    rows = list_items([volume])
    assert rows == [Item(volume, k, "nifti") for k in range(1, 6)]
    for k, image in enumerate(slices):
        np.testing.assert_array_equal(read_item(rows[k])[0], image)


def test_a_volume_folder_gives_slice_rows_and_one_volume_row(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    cls = sorted(d.name for d in synthetic_data.iterdir() if d.is_dir())[0]
    (tmp_path / "in" / cls).mkdir(parents=True)
    _volume(tmp_path / "in" / cls / "brain.nii.gz", _slices(), flip_x=True)
    out = tmp_path / "p.parquet"
    done = CliRunner().invoke(app, [str(tmp_path / "in"), "--out", str(out), "--model", str(exported_model)])
    assert done.exit_code == 0, done.output
    rows = pl.read_parquet(out)
    assert rows.height == 5 and set(rows["status"]) == {"ok"} and set(rows["true_class"]) == {cls}
    assert rows["series_uid"].unique().to_list() == [f"{cls}/brain.nii.gz"]
    assert sorted(rows["instance_number"].to_list()) == [1, 2, 3, 4, 5]
    series = pl.read_csv(tmp_path / "p_metrics" / "series.csv")
    assert (
        series.height == 1 and series["slices"][0] == 5 and series["series_description"][0] == "NIfTI volume"
    )


def test_volume_claims_are_bounded_before_reading(tmp_path: Path) -> None:
    """A header claiming 4000 x 4000 x 4000 (a few hundred bytes compressed) is one error row, not 64 G voxels."""
    liar = tmp_path / "liar.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), str(liar))
    raw = nib.load(str(liar))
    raw.header.set_data_shape((4000, 4000, 4000))
    with open(tmp_path / "claims.nii", "wb") as handle:
        handle.write(raw.header.binaryblock + b"\0" * (352 - len(raw.header.binaryblock)) + b"\0" * 16)
    assert list_items([tmp_path / "claims.nii"]) == [Item(tmp_path / "claims.nii", None, "nifti")]
    with pytest.raises(ImageDecodeError, match="64,000,000,000 voxels, over 4 x the limit of 50,000,000"):
        read_image(tmp_path / "claims.nii")


def test_a_file_named_like_a_member_is_just_a_file(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    """Members are fields, not path strings (issue 30): a picture named `v.nii.gz#slice=2` beside the volume
    v.nii.gz is that picture, scored as itself, never slice 2 of the volume."""
    import shutil

    import mri44

    _volume(tmp_path / "v.nii.gz", _slices(), flip_x=False)
    picture = sorted(synthetic_data.rglob("*.png"))[0]
    spoof = tmp_path / "v.nii.gz#slice=2"
    shutil.copy(picture, spoof)
    model = mri44.load_model(exported_model)
    rows = model.predict([spoof])
    assert rows.height == 1 and rows["status"][0] == "ok" and rows["slice"][0] is None
    assert rows["path"][0] == str(spoof)
    as_itself = model.predict([picture])
    assert rows["confidence"][0] == pytest.approx(as_itself["confidence"][0], abs=1e-6)
    assert rows["pred_class"][0] == as_itself["pred_class"][0]


def test_a_rank_deficient_affine_is_one_error_row_not_the_end_of_the_run(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    """nibabel cannot orient a volume whose sform has a zero row (NaN axes): that ended the whole run with a
    traceback while listing (issue 30); now it is that file's error row beside the others."""
    import shutil
    import struct

    import mri44

    folder = tmp_path / "in"
    folder.mkdir()
    flat = folder / "flat.nii"
    nib.save(nib.Nifti1Image(np.ones((16, 16, 4), np.int16), np.eye(4)), str(flat))
    raw = bytearray(flat.read_bytes())
    raw[252:256] = struct.pack("<hh", 0, 1)  # qform_code 0, sform_code 1 ...
    raw[312:328] = struct.pack("<4f", 0, 0, 0, 0)  # ... and an sform whose third row is zero
    flat.write_bytes(bytes(raw))
    shutil.copy(sorted(synthetic_data.rglob("*.png"))[0], folder / "good.png")
    rows = mri44.load_model(exported_model).predict(folder)
    assert rows["status"].to_list() == ["error", "ok"]
    assert "affine does not say which way its axes run" in rows["error"][0]


def test_a_volumes_stored_bytes_are_bounded_like_its_voxels(tmp_path: Path) -> None:
    """float64 voxels take twice the memory of the float32 the limit counts: bounded by bytes too (issue 30)."""
    big = tmp_path / "f64.nii"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 30), np.float64), np.eye(4)), str(big))
    with pytest.raises(ImageDecodeError, match="24,000 bytes of voxels, over 16,000"):
        read_item(Item(big, 1, "nifti"), Limits(max_pixels=1000))
    assert read_item(Item(big, 1, "nifti"), Limits(max_pixels=2000))[0].shape == (10, 10)


def test_threads_share_one_volume_in_memory(tmp_path: Path) -> None:
    """Decoding threads read slices of two volumes at once: every slice is right, and the process holds one
    volume, not one per thread (issue 30: a 97 KB .nii.gz took 2.5 GB in each thread)."""
    from concurrent.futures import ThreadPoolExecutor

    from mri44 import nifti

    volumes = {name: _volume(tmp_path / f"{name}.nii.gz", _slices(), flip_x=name == "b") for name in "ab"}
    expected = _slices()
    jobs = [(volumes[name], k) for _ in range(3) for name in "ab" for k in range(1, 6)]
    with ThreadPoolExecutor(4) as pool:
        read = list(pool.map(lambda job: read_item(Item(job[0], job[1], "nifti"))[0], jobs))
    for (_, k), image in zip(jobs, read, strict=True):
        np.testing.assert_array_equal(image, expected[k - 1])
    assert nifti._cached is not None and nifti._cached[0][0] in {str(v) for v in volumes.values()}
