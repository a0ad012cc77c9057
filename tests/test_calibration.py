import numpy as np
import pytest

from mri44.calibration import fit_temperature, softmax
from mri44.metrics import expected_calibration_error


def test_fit_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 10))
    true_t = 2.5
    p = softmax(logits, true_t)
    labels = np.array([rng.choice(10, p=row) for row in p])
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.1)


def test_temperature_keeps_predictions_and_fixes_overconfidence() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (3000, 5))
    labels = np.array([rng.choice(5, p=row) for row in softmax(logits, 3.0)])
    raw, scaled = softmax(logits), softmax(logits, fit_temperature(logits, labels))
    assert (raw.argmax(1) == scaled.argmax(1)).all()
    correct = raw.argmax(1) == labels
    assert expected_calibration_error(scaled.max(1), correct) < 0.5 * expected_calibration_error(
        raw.max(1), correct
    )


def test_softmax_is_stable_and_normalised() -> None:
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(p, [[1.0, 0.0], [0.5, 0.5]])


def test_a_temperature_on_the_bound_of_its_range_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """A tiny run ended with temperature 20.0, the cap, and nothing said so (issue 33)."""
    import logging

    from mri44.calibration import T_RANGE, fit_temperature

    uninformative = np.zeros((50, 4), np.float32)
    uninformative[:, 0] = 5.0  # always sure of class 0, right a quarter of the time
    labels = np.arange(50) % 4
    # The handler on the logger itself: once a command has run in this process, mri44's loggers no longer
    # propagate to the root logger where caplog listens (mri44.console.setup_logging).
    logger = logging.getLogger("mri44.calibration")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="mri44.calibration"):
            assert fit_temperature(uninformative, labels) == pytest.approx(T_RANGE[1])
    finally:
        logger.removeHandler(caplog.handler)
    assert "sits on the bound of its range" in caplog.text
