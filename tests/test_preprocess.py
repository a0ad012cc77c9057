import numpy as np
import pytest

from mri44.preprocess import PreprocessSpec, normalize, to_model_pixels


def test_spec_round_trips_through_json() -> None:
    spec = PreprocessSpec(
        size=96, resize="stretch", interpolation="linear", channels="rgb", mean=(0.5, 0.5, 0.5)
    )
    again = PreprocessSpec.from_json(spec.to_json())
    assert again == spec
    assert again.digest() == spec.digest()
    assert PreprocessSpec(size=97).digest() != spec.digest()


def test_invalid_spec_is_refused() -> None:
    with pytest.raises(ValueError):
        PreprocessSpec(size=4)
    with pytest.raises(ValueError):
        PreprocessSpec(resize="crop")  # type: ignore[arg-type]


def test_pad_keeps_aspect_and_centres() -> None:
    img = np.full((20, 40), 255, np.uint8)  # wide image
    out = to_model_pixels(img, PreprocessSpec(size=40, resize="pad", channels="grey"))
    assert out.shape == (40, 40, 1)
    assert out[:10].max() == 0 and out[30:].max() == 0  # letterbox bands
    assert out[10:30].min() == 255


def test_stretch_fills_the_square() -> None:
    img = np.full((20, 40), 255, np.uint8)
    out = to_model_pixels(img, PreprocessSpec(size=32, resize="stretch"))
    assert out.min() == 255


def test_grey_and_rgb_copies_of_a_slice_give_the_same_input() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (50, 60), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    spec = PreprocessSpec(size=32)
    assert np.array_equal(to_model_pixels(grey, spec), to_model_pixels(rgb, spec))


def test_normalize_matches_mean_std_formula() -> None:
    rng = np.random.default_rng(1)
    spec = PreprocessSpec(size=8, channels="rgb")
    pixels = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = normalize(pixels, spec)
    expected = (pixels.transpose(0, 3, 1, 2) / 255.0 - np.array(spec.mean)[None, :, None, None]) / np.array(
        spec.std
    )[None, :, None, None]
    assert x.dtype == np.float32 and x.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(x, expected, atol=1e-5)


def test_normalize_replicates_grey_to_three_channels() -> None:
    spec = PreprocessSpec(size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = normalize(np.full((8, 8, 1), 255, np.uint8), spec)
    assert x.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(x, 2.0, atol=1e-6)
