import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from mri44.imageio import ImageDecodeError
from mri44.readers import read_image


def _write(path: Path, image: np.ndarray, ext: str | None = None) -> Path:
    ok, data = cv2.imencode(ext or path.suffix, image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


@pytest.fixture
def grey() -> np.ndarray:
    img = np.zeros((30, 40), np.uint8)
    img[5:25, 10:30] = 200
    return img


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tiff"])
def test_greyscale_formats_decode(tmp_path: Path, grey: np.ndarray, ext: str) -> None:
    out = read_image(_write(tmp_path / f"a{ext}", grey))
    if ext == ".webp":  # WebP has no greyscale mode: it comes back as three equal channels
        assert out.shape == (30, 40, 3)
        assert np.abs(out[..., 0].astype(int) - out[..., 2]).max() <= 2
        out = out[..., 0]
    assert out.shape == (30, 40) and out.dtype == np.uint8
    assert abs(int(out[15, 20]) - 200) <= 3


def test_uppercase_extension_and_odd_path(tmp_path: Path, grey: np.ndarray) -> None:
    folder = tmp_path / "Astrocitoma T1C+ (ünïcødé) 脑"
    folder.mkdir()
    path = _write(folder / "slice (1) + x.JPG", grey, ".jpg")
    assert read_image(path).shape == (30, 40)


def test_rgb_is_returned_in_rgb_order(tmp_path: Path) -> None:
    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR
    out = read_image(_write(tmp_path / "red.png", bgr))
    assert out.shape == (8, 8, 3)
    assert tuple(out[0, 0]) == (255, 0, 0)


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    bgra = np.full((8, 8, 4), 255, np.uint8)
    bgra[:, :4, 3] = 0  # left half transparent
    out = read_image(_write(tmp_path / "rgba.png", bgra))
    assert out.shape == (8, 8, 3)
    assert out[0, 0].max() == 0 and out[0, 7].min() == 255


def test_16_bit_is_rescaled_by_its_range(tmp_path: Path) -> None:
    img = np.zeros((10, 10), np.uint16)
    img[:, 5:] = 4000  # a 12-bit scanner range: must not come out almost black
    out = read_image(_write(tmp_path / "deep.png", img))
    assert out.dtype == np.uint8
    assert out[0, 0] == 0 and out[0, 9] == 255


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image", "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 50, "truncated"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_truncated_real_jpeg(tmp_path: Path, grey: np.ndarray) -> None:
    good = _write(tmp_path / "good.jpg", grey)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        read_image(cut)


def test_jpeg_with_bytes_after_its_end_marker_decodes(tmp_path: Path, grey: np.ndarray) -> None:
    """Scanners and phones append data after the end-of-image marker; the image itself is whole."""
    good = _write(tmp_path / "good.jpg", grey)
    trailer = tmp_path / "trailer.jpg"
    trailer.write_bytes(good.read_bytes() + b"SEFT trailer \x00\x01" * 200)
    np.testing.assert_array_equal(read_image(trailer), read_image(good))


def test_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="cannot read"):
        read_image(tmp_path / "missing.jpg")


def _png_claiming(width: int, height: int, real: bytes) -> bytes:
    """A small real PNG whose IHDR now claims width x height (CRC fixed, so it looks valid)."""
    import struct
    import zlib

    ihdr = struct.pack(">II", width, height) + real[24:29]
    chunk = b"IHDR" + ihdr
    return real[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + real[33:]


def _jpeg_claiming(width: int, height: int, real: bytes) -> bytes:
    sof = real.index(b"\xff\xc0")  # baseline frame header: length(2) precision(1) height(2) width(2)
    return real[: sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + real[sof + 9 :]


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_header_claiming_huge_dimensions_is_refused_before_decoding(
    tmp_path: Path, grey: np.ndarray, kind: str
) -> None:
    real = _write(tmp_path / f"real.{kind}", grey, ".png" if kind == "png" else ".jpg").read_bytes()
    forge = _png_claiming if kind == "png" else _jpeg_claiming
    bomb = tmp_path / f"bomb.{kind}"
    bomb.write_bytes(forge(30000, 30000, real))
    with pytest.raises(ImageDecodeError, match="(30000 x 30000|900,000,000) pixels, over the limit"):
        read_image(bomb)
    small = tmp_path / f"small.{kind}"
    small.write_bytes(forge(40, 30, real))  # the same forgery at the true size still decodes
    assert read_image(small).shape[:2] == (30, 40)
    with pytest.raises(ImageDecodeError, match="over the limit of 1,000"):
        read_image(small, max_pixels=1000)


def test_jpeg_header_pillow_cannot_parse_is_still_bounded(tmp_path: Path, grey: np.ndarray) -> None:
    """A short Adobe APP14 segment after SOI: Pillow gives up on the header, libjpeg decodes it anyway. The pixel
    bound comes from our own marker walk, so the 30000 x 30000 claim is refused and the true size still decodes."""
    real = _write(tmp_path / "real.jpg", grey, ".jpg").read_bytes()
    short_app14 = b"\xff\xee\x00\x07Adobe"
    with pytest.raises(UnidentifiedImageError):  # the premise: Pillow cannot read this header
        Image.open(io.BytesIO(real[:2] + short_app14 + real[2:]))
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(real[:2] + short_app14 + _jpeg_claiming(30000, 30000, real)[2:])
    with pytest.raises(ImageDecodeError, match="30000 x 30000 pixels, over the limit"):
        read_image(bomb)
    fine = tmp_path / "fine.jpg"
    fine.write_bytes(real[:2] + short_app14 + real[2:])
    np.testing.assert_array_equal(read_image(fine), read_image(tmp_path / "real.jpg"))


def test_jpeg_without_a_frame_header_is_refused_not_decoded(tmp_path: Path, grey: np.ndarray) -> None:
    real = _write(tmp_path / "real.jpg", grey, ".jpg").read_bytes()
    sof = real.index(b"\xff\xc0")
    frameless = real[:sof] + real[sof + 2 + int.from_bytes(real[sof + 2 : sof + 4], "big") :]
    path = tmp_path / "frameless.jpg"
    path.write_bytes(frameless)
    with pytest.raises(ImageDecodeError, match="no image size in its header"):
        read_image(path)


def test_fifos_and_oversized_files_are_refused_before_anything_is_read(
    tmp_path: Path, exported_model: Path, synthetic_data: Path
) -> None:
    """A FIFO named like an image would block the run forever; a sparse file claiming 1 GB would be read whole.
    Both become error rows at once, in every format's path (DICOM included) and through discovery."""
    import os
    import shutil

    import mri44
    from mri44.imageio import ImageDecodeError
    from mri44.readers import read_image

    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "x.jpg")
    os.mkfifo(folder / "y.dcm")
    with open(folder / "big.png", "wb") as handle:
        handle.truncate(1 << 30)  # sparse: nothing stored, 1 GB claimed
    shutil.copy(next(synthetic_data.rglob("*.png")), folder / "good.png")
    for name, reason in (
        ("x.jpg", "not a regular file"),
        ("y.dcm", "not a regular file"),
        ("big.png", "larger"),
    ):
        with pytest.raises(ImageDecodeError, match=reason):
            read_image(folder / name)
    rows = mri44.load_model(exported_model).predict(folder).sort("path")
    assert rows["path"].to_list() == ["big.png", "good.png", "x.jpg", "y.dcm"]
    assert rows["status"].to_list() == ["error", "ok", "error", "error"]
