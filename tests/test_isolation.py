"""Decoders that can abort run in worker processes: a dead worker costs one file (issue 30)."""

import os

import pytest

from mri44.isolation import DecoderCrashed, run_isolated


def test_a_call_that_kills_its_worker_is_an_error_and_the_pool_recovers() -> None:
    with pytest.raises(DecoderCrashed, match=r"decoder crashed \(SIGABRT\)"):
        run_isolated(os.abort)
    assert run_isolated(len, b"abc") == 3  # a fresh worker after the crash


def test_a_decoders_own_error_comes_back_as_itself() -> None:
    with pytest.raises(ValueError, match="invalid literal"):
        run_isolated(int, "not a number")


@pytest.mark.slow
def test_one_aborting_file_among_thousands_costs_exactly_one_row(tmp_path, exported_model) -> None:
    """Issue 30's done-when: 2,000 good images and the JPEG-LS file that aborted GDCM: the run completes with
    exactly one error row, that file's."""
    import cv2
    import numpy as np
    from test_dicom import _lying_codestream

    import mri44

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2000):
        cv2.imwrite(str(folder / f"{k:04d}.png"), rng.integers(0, 255, (16, 16), dtype=np.uint8))
    _lying_codestream(folder / "liar.dcm")
    result = mri44.score(folder, out=None, model=str(exported_model))
    assert result.predictions is not None and result.predictions.height == 2001
    assert result.predictions.filter(status="error")["path"].to_list() == ["liar.dcm"]
