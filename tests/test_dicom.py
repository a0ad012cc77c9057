"""DICOM input: rescale, window, MONOCHROME1, extension-less files and multi-frame files score like the image
they were made from; compressed pixel data without its codec is one clear error row."""

from __future__ import annotations

import builtins
import importlib.util
import io
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from mri44.imageio import ImageDecodeError
from mri44.limits import Limits
from mri44.readers import Item, list_items, read_image, read_item
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
    series: str | None = None,
    instance: int | None = None,
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
    if series is not None:
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesDescription = (
            "1.2.826.0.1.99",
            series,
            "AX T1 POST",
        )
        ds.PatientID = "SECRET-ID-42"
    if instance is not None:
        ds.InstanceNumber = instance
    raw = np.stack(frames).astype(np.uint16).tobytes()
    if syntax.is_compressed:  # stand-in compressed bytes: the point is the missing codec, not the image
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + raw[:64]])
    else:
        ds.PixelData = raw
    ds.save_as(path, enforce_file_format=True)


def test_dicom_variants_read_as_their_image(tmp_path: Path, synthetic_data: Path) -> None:
    image = cv2.imread(str(sorted(synthetic_data.rglob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    # stored = 4 I + 100, slope 0.5, intercept -50 -> modality 2 I; DICOM's LINEAR window (PS3.3 C.11.2.1.2.1:
    # centre - 0.5 +- (width - 1) / 2 spans the output range) of centre 255.5, width 511 -> I exactly
    write_dicom(
        tmp_path / "mono2.dcm", [image.astype(np.int32) * 4 + 100], "MONOCHROME2", (255.5, 511.0), 0.5, -50.0
    )
    write_dicom(tmp_path / "mono1.dcm", [255 - image.astype(np.int32)], "MONOCHROME1", (128.0, 256.0))
    write_dicom(
        tmp_path / "noext", [image.astype(np.int32) * 4 + 100], "MONOCHROME2", (255.5, 511.0), 0.5, -50.0
    )
    for name in ("mono2.dcm", "mono1.dcm"):
        np.testing.assert_array_equal(read_image(tmp_path / name), image)
    from mri44.dicom import decode_dicom, is_dicom_path

    assert is_dicom_path(tmp_path / "noext")
    raw = (tmp_path / "noext").read_bytes()
    np.testing.assert_array_equal(decode_dicom(raw, None, 50_000_000), image)


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
        dicom / "0.dcm", [images[0].astype(np.int32) * 4 + 100], "MONOCHROME2", (255.5, 511.0), 0.5, -50.0
    )
    write_dicom(dicom / "1", [255 - images[1].astype(np.int32)], "MONOCHROME1", (128.0, 256.0))
    write_dicom(dicom / "multi.dcm", [im.astype(np.uint16) for im in images], "MONOCHROME2", (128.0, 256.0))
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
    by_path = {(row["path"], row["frame"]): row for row in dcm.iter_rows(named=True)}
    assert set(by_path) == {(f"{cls}/0.dcm", None), (f"{cls}/1", None), (f"{cls}/jp2.dcm", None)} | {
        (f"{cls}/multi.dcm", k)
        for k in (1, 2, 3)  # members are fields: the path stays the file's
    }
    assert dcm["slice"].null_count() == dcm.height
    expected = dict(zip(png["path"], png["confidence"], strict=True))
    pairs = [
        (("0.dcm", None), "0.png"),
        (("1", None), "1.png"),
        (("multi.dcm", 1), "0.png"),
        (("multi.dcm", 3), "2.png"),
    ]
    for (dicom_name, frame), png_name in pairs:
        row = by_path[(f"{cls}/{dicom_name}", frame)]
        assert row["status"] == "ok" and row["true_class"] == cls
        assert row["confidence"] == pytest.approx(expected[f"{cls}/{png_name}"], abs=1e-6)
    assert by_path[(f"{cls}/jp2.dcm", None)]["status"] == "error"
    # stand-in bytes, not a codestream: refused before any codec runs, saying what failed
    assert "JPEG 2000" in by_path[(f"{cls}/jp2.dcm", None)]["error"]
    assert "not decoded" in by_path[(f"{cls}/jp2.dcm", None)]["error"]
    # The Python API given the multi-frame file itself: a row per frame too, named after the path given.
    import mri44

    given = str(dicom / "multi.dcm")
    frames = mri44.load_model(exported_model).predict([given])
    assert frames["path"].to_list() == [given] * 3 and frames["frame"].to_list() == [1, 2, 3]
    assert frames["true_class"].to_list() == [cls] * 3
    assert frames["confidence"][2] == pytest.approx(expected[f"{cls}/2.png"], abs=1e-6)


def _claiming(path: Path, **claims: int) -> Path:
    """Rewrite a DICOM file's header to claim other dimensions or frame counts than its pixel data holds."""
    ds = pydicom.dcmread(path)
    for key, value in claims.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_pixel_claims_are_bounded_by_max_pixels(tmp_path: Path) -> None:
    """A compressed (RLE) file claiming 10000 x 10000 is refused from its header, before any codec runs."""
    from pydicom.uid import RLELossless

    small = np.zeros((8, 8), np.uint16)
    rle = tmp_path / "huge.dcm"
    write_dicom(rle, [small], "MONOCHROME2", None, syntax=RLELossless)
    _claiming(rle, Rows=10000, Columns=10000)
    with pytest.raises(
        ImageDecodeError, match="10000 x 10000 pixels per frame, over the limit of 50,000,000"
    ):
        read_image(rle)
    fine = tmp_path / "fine.dcm"
    write_dicom(fine, [small + 7], "MONOCHROME2", None)
    assert read_image(fine).shape == (8, 8)
    with pytest.raises(ImageDecodeError, match="over the limit of 10"):
        read_image(fine, max_pixels=10)


def test_dicom_frame_count_is_bounded_by_the_file_size(tmp_path: Path) -> None:
    """A small file claiming 5,000,000 frames lists one row, which is its error row; nothing is decoded."""
    liar = tmp_path / "liar.dcm"
    write_dicom(liar, [np.zeros((8, 8), np.uint16)] * 2, "MONOCHROME2", None)
    _claiming(liar, NumberOfFrames=5_000_000)
    assert liar.stat().st_size < 2000
    assert list_items([liar]) == [Item(liar, None, "dicom")]
    with pytest.raises(ImageDecodeError, match="5,000,000 frames of 8 x 8, more than its"):
        read_image(liar)


def test_one_frame_of_a_multiframe_file_decodes_only_that_frame(tmp_path: Path) -> None:
    """Scoring a file of N frames row by row must cost N frames, not N whole files: the memory that reading one
    frame allocates stays far below the file's pixel data (the old reader decoded every frame for each row)."""
    import tracemalloc

    frames = [np.full((128, 128), k, np.uint16) for k in range(400)]  # 13 MB of pixel data
    multi = tmp_path / "multi.dcm"
    write_dicom(multi, frames, "MONOCHROME2", (200.5, 401.0))
    rows = list_items([multi])
    assert len(rows) == 400 and rows[-1] == Item(multi, 400, "dicom")
    tracemalloc.start()
    last = read_item(rows[-1])[0]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < multi.stat().st_size / 8, (
        f"peak {peak:,} bytes to read one frame of {multi.stat().st_size:,}"
    )
    assert int(last[0, 0]) == round((399 - 0) * 255 / 400)


def test_voi_lut_sequence_and_sigmoid_windows_are_applied_as_a_viewer_does(tmp_path: Path) -> None:
    """pydicom's VOI transforms, not a linear window of our own: a VOI LUT Sequence (here an 8-bit inverting
    table, preferred over the window beside it) and VOILUTFunction SIGMOID (PS3.3 C.11.2.1.3.1)."""
    from pydicom.dataset import Dataset as Item
    from pydicom.sequence import Sequence

    ramp = np.tile(np.arange(256, dtype=np.uint16), (4, 1))
    lut = tmp_path / "lut.dcm"
    write_dicom(lut, [ramp], "MONOCHROME2", (5000.0, 10.0))  # a window that would make it nearly binary
    ds = pydicom.dcmread(lut)
    item = Item()
    item.add_new(0x00283002, "US", [256, 0, 8])  # LUT Descriptor: entries, first value mapped, bits
    item.add_new(0x00283006, "US", [255 - v for v in range(256)])  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    del ds.WindowCenter, ds.WindowWidth
    ds.save_as(lut, enforce_file_format=True)
    np.testing.assert_array_equal(read_image(lut)[0], 255 - np.arange(256))

    sigmoid = tmp_path / "sigmoid.dcm"
    write_dicom(sigmoid, [ramp], "MONOCHROME2", (128.0, 64.0))
    ds = pydicom.dcmread(sigmoid)
    ds.VOILUTFunction = "SIGMOID"
    ds.save_as(sigmoid, enforce_file_format=True)
    expected = 255.0 / (1.0 + np.exp(-4.0 * (np.arange(256) - 128.0) / 64.0))
    assert np.abs(read_image(sigmoid)[0].astype(float) - expected).max() <= 0.5 + 1e-9


def test_a_series_folder_gives_tagged_slice_rows_and_one_series_row(
    tmp_path: Path, synthetic_data: Path, exported_model: Path
) -> None:
    """Slices carry study, series, instance and description (never the patient's name or ID); the metrics
    folder gets one row per series: the class of the mean slice probabilities, the slice count, the most
    confident slice."""
    pngs = sorted(synthetic_data.rglob("*.png"))[:4]
    cls = pngs[0].parent.name
    folder = tmp_path / "study" / cls
    folder.mkdir(parents=True)
    for k, png in enumerate(pngs[:3]):
        image = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE).astype(np.int32)
        write_dicom(
            folder / f"s{k}.dcm", [image], "MONOCHROME2", (128.0, 256.0), series="1.2.3.4", instance=k + 1
        )
    cv2.imwrite(str(folder / "plain.png"), cv2.imread(str(pngs[3])))
    out = tmp_path / "p.parquet"
    done = CliRunner().invoke(
        app, [str(tmp_path / "study"), "--out", str(out), "--model", str(exported_model)]
    )
    assert done.exit_code == 0, done.output
    rows = pl.read_parquet(out).sort("path")
    dicom = rows.filter(pl.col("path").str.ends_with(".dcm"))
    assert dicom["series_uid"].to_list() == ["1.2.3.4"] * 3 and dicom["instance_number"].to_list() == [
        1,
        2,
        3,
    ]
    assert set(dicom["series_description"]) == {"AX T1 POST"} and set(dicom["study_uid"]) == {
        "1.2.826.0.1.99"
    }
    assert rows.filter(pl.col("path").str.ends_with(".png"))["series_uid"].to_list() == [None]
    assert not any("patient" in c for c in rows.columns) and "SECRET" not in out.read_bytes().decode(
        "latin-1"
    )
    series = pl.read_csv(tmp_path / "p_metrics" / "series.csv")
    assert series.height == 1 and series["slices"][0] == 3 and series["true_class"][0] == cls
    from mri44.calibration import softmax
    from mri44.preprocess import load_pixels, normalize
    from mri44.stages.score.backends import open_backend

    backend = open_backend(exported_model, "cpu")
    spec = backend.meta.preprocess
    x = np.concatenate([normalize(load_pixels(folder / f"s{k}.dcm", spec), spec) for k in range(3)])
    mean = softmax(backend.run(x), backend.meta.temperature).mean(0)
    assert series["pred_class"][0] == backend.meta.classes[int(mean.argmax())]
    assert series["confidence"][0] == pytest.approx(float(mean.max()), abs=1e-5)
    assert series["most_confident_slice"][0] in dicom["path"].to_list()
    if importlib.util.find_spec("matplotlib") is not None:
        from mri44.stages.score.report_cli import app as report_app

        made = CliRunner().invoke(report_app, [str(out)])
        assert made.exit_code == 0, made.output
        html = (tmp_path / "p.html").read_text()
        assert 'id="series"' in html and "AX T1 POST" in html
        assert re.search(r"AX T1 POST, image [123]</div>", html)  # the cards say which slice of which series


def test_compressed_dicom_as_pacs_exports_it_decodes_like_the_uncompressed_file() -> None:
    """The dicom extra's codec (python-gdcm, BSD): the same MR slice stored uncompressed, RLE, JPEG-LS lossless
    and JPEG 2000 lossless (pydicom's own test files, written by other tools) reads back identically."""
    pytest.importorskip("gdcm", reason="the codec comes with the dicom extra: pip install -e '.[dicom]'")
    from pydicom.data import get_testdata_file

    plain = read_image(Path(get_testdata_file("MR_small.dcm")))
    for name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"):
        np.testing.assert_array_equal(read_image(Path(get_testdata_file(name))), plain, err_msg=name)


def test_a_frames_tags_come_from_the_header_its_pixels_were_decoded_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every frame row carries the file's tags, taken from the header read that decoding the frame needs anyway:
    no second parse of the header for the tags (an enhanced MR file's header holds megabytes of per-frame groups,
    and the old scorer parsed it again after scoring)."""
    from mri44 import dicom

    frames = [np.full((8, 8), v, np.uint16) for v in (10, 20, 30)]
    write_dicom(tmp_path / "multi.dcm", frames, "MONOCHROME2", None, series="1.2.3.9", instance=7)
    items = list_items([tmp_path / "multi.dcm"])
    parses: list[bool] = []
    real = pydicom.dcmread
    monkeypatch.setattr(
        pydicom, "dcmread", lambda *a, **k: parses.append(bool(k.get("stop_before_pixels"))) or real(*a, **k)
    )
    read = [read_item(item) for item in items]
    assert [item.member for item in items] == [1, 2, 3]
    assert parses.count(True) == 3  # one bounded header read per frame, none extra for the tags
    assert [tags["series_uid"] for _, tags in read] == ["1.2.3.9"] * 3
    assert [int(pixels[0, 0]) for pixels, _ in read] != [None] * 3 and dicom.tags_of(
        pydicom.dcmread(tmp_path / "multi.dcm")
    )["instance_number"] == 7


def test_without_pydicom_a_dicom_file_says_which_extra_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_dicom(tmp_path / "x.dcm", [np.full((8, 8), 5, np.uint16)], "MONOCHROME2", None)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    with pytest.raises(ImageDecodeError, match=r"DICOM input needs pydicom: pip install 'mri44\[dicom\]'"):
        read_image(tmp_path / "x.dcm")


def test_frames_beyond_max_frames_are_left_out_and_counted(tmp_path: Path, exported_model: Path) -> None:
    """Row amplification is bounded (issue 30): a file of 5 frames under --max-frames 2 gives 2 rows, and the
    summary counts what was left out and says why."""
    import mri44

    folder = tmp_path / "in"
    folder.mkdir()
    write_dicom(
        folder / "multi.dcm", [np.full((8, 8), 9 * k, np.uint16) for k in range(5)], "MONOCHROME2", None
    )
    result = mri44.score(folder, out=None, model=str(exported_model), max_frames=2)
    assert result.predictions is not None and result.predictions["frame"].to_list() == [1, 2]
    assert (
        result.predictions["note"].to_list() == ["frames 3-5 of 5 left out (--max-frames 2)"] * 2
    )  # the rows say
    assert [reason for _, reason in result.skipped] == ["frames 3-5 of 5 left out (--max-frames 2)"]
    everything = mri44.score(folder, out=None, model=str(exported_model))
    assert (
        everything.predictions is not None and everything.predictions.height == 5 and not everything.skipped
    )


def _lying_codestream(path: Path) -> Path:
    """pydicom's JPEG-LS test file with its codestream's frame header claiming 36000 x 36000 (the header: 64 x 64):
    GDCM aborted the process allocating that (issue 30)."""
    from pydicom.data import get_testdata_file

    raw = bytearray(Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")).read_bytes())
    sof = raw.find(b"\xff\xf7")  # JPEG-LS's start of frame: length, precision, height, width
    raw[sof + 5 : sof + 9] = (36000).to_bytes(2, "big") * 2
    path.write_bytes(bytes(raw))
    return path


def test_a_codestream_claiming_more_than_its_header_is_one_error_row(
    tmp_path: Path, exported_model: Path
) -> None:
    """Among good files, the lying JPEG-LS file becomes exactly one error row; nothing aborts."""
    import shutil

    from pydicom.data import get_testdata_file

    import mri44

    folder = tmp_path / "in"
    folder.mkdir()
    _lying_codestream(folder / "liar.dcm")
    for name in ("MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small.dcm"):
        shutil.copy(get_testdata_file(name), folder / name)
    rows = mri44.load_model(exported_model).predict(folder)
    errors = rows.filter(status="error")
    assert rows.height == 4 and errors["path"].to_list() == ["liar.dcm"]
    assert "claims 36000 x 36000 pixels, the header 64 x 64" in errors["error"][0]


def test_a_deflate_bomb_is_refused_while_streaming(tmp_path: Path) -> None:
    """A Deflated Explicit VR file is inflated, for its header alone, in one piece by pydicom: a 195 KB file took
    2.5 GB (issue 30). Its inflated size is now counted a megabyte at a time first, against the limit of an
    uncompressed file (8 bytes per --max-pixels pixel), and what the header does not declare is never decoded."""
    import tracemalloc

    from pydicom.data import get_testdata_file
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # 64 x 64, one frame
    ds.PixelData = np.zeros((2000, 4000), np.uint16).tobytes()  # 16 MB of zeros: a few KB deflated
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    bomb = tmp_path / "bomb.dcm"
    ds.save_as(bomb, enforce_file_format=True)
    assert bomb.stat().st_size < 100_000
    tracemalloc.start()
    with pytest.raises(ImageDecodeError, match="inflates to more than 1,120,576 bytes"):
        read_image(bomb, max_pixels=9_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8_000_000, f"{peak:,} bytes to refuse it"
    assert list_items([bomb], Limits(max_pixels=9_000)) == [
        Item(bomb, None, "dicom")
    ]  # one row: its error row
    assert read_image(bomb).shape == (64, 64)  # within the default limit: the one frame its header declares


def test_a_nan_rescale_slope_is_an_error_not_a_blank_frame(tmp_path: Path) -> None:
    """RescaleSlope NaN turned every pixel into NaN, which became a blank frame scored as ok (issue 30)."""
    write_dicom(
        tmp_path / "nan.dcm", [np.full((8, 8), 7, np.uint16)], "MONOCHROME2", None, slope=float("nan")
    )
    with pytest.raises(ImageDecodeError, match="modality LUT gives non-finite values"):
        read_image(tmp_path / "nan.dcm")


def test_a_ct_object_is_flagged_by_its_modality_and_so_is_its_series(
    tmp_path: Path, exported_model: Path
) -> None:
    """CT, CR and ultrasound files were scored as brain MRI: Modality was never read (issue 32). Now a non-MR
    object is flagged with its reason, whatever its features, and a series flagged in most of its images is too."""
    import shutil

    from pydicom.data import get_testdata_file

    import mri44
    from mri44.predictions import series_table

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    write_dicom(
        folder / "us.dcm",
        [np.full((16, 16), 9 * k, np.uint16) for k in range(3)],
        "MONOCHROME2",
        None,
        series="7.7",
    )
    us = pydicom.dcmread(folder / "us.dcm")
    us.Modality = "US"
    us.save_as(folder / "us.dcm")
    model = mri44.load_model(exported_model)
    rows = model.predict(folder)
    by = {(r["path"], r["frame"]): r for r in rows.iter_rows(named=True)}
    ct = by[("ct.dcm", None)]
    assert ct["modality"] == "CT" and ct["ood"] is True and ct["ood_reason"].startswith("modality CT")
    assert by[("mr.dcm", None)]["modality"] == "MR" and "modality" not in (
        by[("mr.dcm", None)]["ood_reason"] or ""
    )
    assert [by[("us.dcm", k)]["ood_reason"].split(";")[0] for k in (1, 2, 3)] == ["modality US"] * 3
    series = series_table(rows, model.classes)
    assert series is not None
    flagged = series.filter(pl.col("series_uid") == "7.7")
    assert flagged["ood_fraction"].to_list() == [1.0] and flagged["ood"].to_list() == [True]


@pytest.mark.slow
def test_pydicoms_own_test_files_score_wherever_pydicom_decodes_them(
    tmp_path: Path, exported_model: Path
) -> None:
    """Issue 33: on pydicom's bundled test files, 80 of 241 rows were errors, most of them objects that hold no
    image. Now such objects are skipped with their reason, and every file whose pixels pydicom itself decodes
    (its own pixel_array, with the codecs installed) gives ok rows."""
    import shutil
    import warnings

    from pydicom.data import get_testdata_file

    import mri44

    folder = tmp_path / "pydicom"
    shutil.copytree(Path(get_testdata_file("MR_small.dcm")).parent, folder)
    result = mri44.score(folder, out=None, model=str(exported_model))
    assert result.predictions is not None
    no_image = [path for path, reason in result.skipped if reason.startswith("no pixel data")]
    assert len(no_image) > 30  # DICOMDIRs, reports, presentation states: skipped, not error rows
    failed = set(result.predictions.filter(status="error")["path"])
    decodable = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(failed):
            try:
                assert pydicom.dcmread(folder / path, force=True).pixel_array.size  # decoded by pydicom
                decodable.append(path)
            except Exception:
                pass
    assert decodable == [], "pydicom decodes these, we did not"
    assert len(failed) < 10 and result.predictions.filter(status="ok").height > 150


def test_a_dicom_object_without_pixels_is_skipped_when_listed_and_one_error_when_read(tmp_path: Path) -> None:
    """A structured report holds no image: a folder lists it under skipped with the reason, read_image() raises
    the one-line ImageDecodeError (it raised AttributeError: no attribute 'Rows')."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "SR", "Test^Report"
    for syntax in (ExplicitVRLittleEndian, JPEG2000Lossless):  # a compressed syntax took another path
        meta.TransferSyntaxUID = syntax
        path = tmp_path / f"report-{syntax.name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        skipped: list[tuple[str, str]] = []
        assert list_items([path], skipped=skipped) == []
        assert len(skipped) == 1 and skipped[0][1].startswith("no pixel data")
        with pytest.raises(ImageDecodeError, match="no pixel data"):
            read_image(path)


def test_a_decode_error_names_every_codec_that_failed() -> None:
    """pydicom lists one reason per codec; the row kept only the last (Pillow's), hiding GDCM's (issue 33)."""
    from mri44.dicom import _reason

    raised = RuntimeError(
        "Unable to decode as exceptions were raised by all available plugins:\n"
        "  gdcm: GDCM does not support 'JPEG Extended' for samples with 12-bit precision\n"
        "  pillow: Pillow does not support 'JPEG Extended' for samples with 12-bit precision"
    )
    assert _reason(raised).startswith("gdcm: GDCM does not support") and "; pillow: Pillow" in _reason(raised)
    assert (
        _reason(ValueError("cannot reshape array")) == "cannot reshape array"
        and _reason(ValueError()) == "ValueError"
    )


def test_a_one_image_dicom_file_is_read_once_and_hashed_from_that_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SHA-256 that seen_in_training matches comes from the bytes that were decoded: one read of the file,
    not a second one to hash it (which could also see other bytes)."""
    from mri44.files import file_sha256
    from mri44.preprocess import PreprocessSpec, load_item

    write_dicom(tmp_path / "one.dcm", [np.full((8, 8), 40, np.uint16)], "MONOCHROME2", None, series="1.2.3.9")
    (item,) = list_items([tmp_path / "one.dcm"])
    expected = file_sha256(tmp_path / "one.dcm")
    opened: list[str] = []
    real = io.open

    def counting_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    _, tags = load_item(item, PreprocessSpec(size=16))
    assert tags is not None and tags["sha256"] == expected and tags["series_uid"] == "1.2.3.9"
    assert opened.count(str(tmp_path / "one.dcm")) == 1
