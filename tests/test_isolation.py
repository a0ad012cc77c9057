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
