"""DICOM input: rescale, window, MONOCHROME1, extension-less files and multi-frame files score like the image
they were made from; compressed pixel data without its codec is one clear error row."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from mri44.imageio import read_image
from mri44.stages.score.cli import app

pydicom = pytest.importorskip("pydicom", reason="DICOM is an extra: pip install -e '.[dicom]'")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, SecondaryCaptureImageStorage, generate_uid  # noqa: E402


def write_dicom(
    path: Path,
    frames: list[np.ndarray],
    photometric: str,
    window: tuple[float, float] | None,
    slope: float = 1.0,
    intercept: float = 0.0,
    syntax=ExplicitVRLittleEndian,
) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "MR", "Test^Phantom"
    ds.Rows, ds.Columns = frames[0].shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    raw = np.stack(frames).astype(np.uint16).tobytes()
    if syntax.is_compressed:  # stand-in compressed bytes: the point is the missing codec, not the image
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + raw[:64]])
    else:
        ds.PixelData = raw
    ds.save_as(path, enforce_file_format=True)


def test_dicom_variants_read_as_their_image(tmp_path: Path, synthetic_data: Path) -> None:
    image = cv2.imread(str(sorted(synthetic_data.rglob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    # stored = 4 I + 100, slope 0.5, intercept -50 -> modality 2 I; window [0, 510] -> I exactly
    write_dicom(
        tmp_path / "mono2.dcm", [image.astype(np.int32) * 4 + 100], "MONOCHROME2", (255.0, 510.0), 0.5, -50.0
    )
    write_dicom(tmp_path / "mono1.dcm", [255 - image.astype(np.int32)], "MONOCHROME1", (127.5, 255.0))
    write_dicom(
        tmp_path / "noext", [image.astype(np.int32) * 4 + 100], "MONOCHROME2", (255.0, 510.0), 0.5, -50.0
    )
    for name in ("mono2.dcm", "mono1.dcm"):
        np.testing.assert_array_equal(read_image(tmp_path / name), image)
    from mri44.dicom import decode_dicom, is_dicom_path

    assert is_dicom_path(tmp_path / "noext")
    np.testing.assert_array_equal(decode_dicom(tmp_path / "noext"), image)


def test_dicom_folder_scores_like_the_images(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    pngs = sorted(synthetic_data.rglob("*.png"))[:3]
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in pngs]
    cls = pngs[0].parent.name
    plain, dicom = tmp_path / "png" / cls, tmp_path / "dcm" / cls
    plain.mkdir(parents=True)
    dicom.mkdir(parents=True)
    for k, image in enumerate(images):
        cv2.imwrite(str(plain / f"{k}.png"), image)
    write_dicom(
        dicom / "0.dcm", [images[0].astype(np.int32) * 4 + 100], "MONOCHROME2", (255.0, 510.0), 0.5, -50.0
    )
    write_dicom(dicom / "1", [255 - images[1].astype(np.int32)], "MONOCHROME1", (127.5, 255.0))
    write_dicom(dicom / "multi.dcm", [im.astype(np.uint16) for im in images], "MONOCHROME2", (127.5, 255.0))
    write_dicom(dicom / "jp2.dcm", [images[0]], "MONOCHROME2", None, syntax=JPEG2000Lossless)
    runner = CliRunner()
    for name in ("png", "dcm"):
        result = runner.invoke(
            app,
            [
                str(tmp_path / name),
                "--out",
                str(tmp_path / f"{name}.parquet"),
                "--model",
                str(exported_model),
            ],
        )
        assert result.exit_code == 0, result.output
    png, dcm = (pl.read_parquet(tmp_path / f"{n}.parquet") for n in ("png", "dcm"))
    by_path = dict(zip(dcm["path"], dcm.iter_rows(named=True), strict=True))
    assert set(by_path) == {f"{cls}/0.dcm", f"{cls}/1", f"{cls}/jp2.dcm"} | {
        f"{cls}/multi.dcm#frame={k}" for k in (1, 2, 3)
    }
    expected = dict(zip(png["path"], png["confidence"], strict=True))
    pairs = [
        ("0.dcm", "0.png"),
        ("1", "1.png"),
        ("multi.dcm#frame=1", "0.png"),
        ("multi.dcm#frame=3", "2.png"),
    ]
    for dicom_name, png_name in pairs:
        row = by_path[f"{cls}/{dicom_name}"]
        assert row["status"] == "ok" and row["true_class"] == cls
        assert row["confidence"] == pytest.approx(expected[f"{cls}/{png_name}"], abs=1e-6)
    assert by_path[f"{cls}/jp2.dcm"]["status"] == "error"
    assert "codec" in by_path[f"{cls}/jp2.dcm"]["error"]
