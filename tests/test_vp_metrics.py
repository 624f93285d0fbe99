"""VP metrics: wrapped angle errors, NetLLM's MAE, great-circle distances."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.vp.metrics import (
    angle_errors_deg,
    great_circle_deg,
    mae_deg,
    mae_per_axis_deg,
    score_windows,
    window_mae_deg,
)

angles = st.floats(-180.0, 180.0, allow_nan=False)
pitches = st.floats(-90.0, 90.0, allow_nan=False)


@pytest.mark.parametrize("pred, true, error", [
    (179.0, -179.0, 2.0), (-179.0, 179.0, 2.0), (180.0, -180.0, 0.0), (0.0, 180.0, 180.0),
    (10.0, -10.0, 20.0), (90.0, -90.0, 180.0), (350.0, -10.0, 0.0), (-170.0, 170.0, 20.0),
    (540.0, 0.0, 180.0), (725.0, 0.0, 5.0),
])
def test_wrapped_errors(pred: float, true: float, error: float) -> None:
    assert angle_errors_deg(np.array(pred), np.array(true)) == pytest.approx(error)


@given(angles, angles)
def test_wrap_matches_netllm_for_in_range_inputs(a: float, b: float) -> None:
    # NetLLM: min(|d|, |d + 360|, |d - 360|) with d = b - a
    reference = min(abs(b - a), abs(b + 360 - a), abs(b - 360 - a))
    assert float(angle_errors_deg(np.array(a), np.array(b))) == pytest.approx(reference, abs=1e-9)


def test_mae_is_the_mean_over_axes_and_steps() -> None:
    true = np.zeros((2, 20, 3))
    pred = np.zeros((2, 20, 3))
    pred[0, :, 2] = 179.0 - 360.0  # yaw off by 181 -> 179 after the wrap
    true[0, :, 2] = 0.0
    pred[1, :, 0] = 3.0
    assert window_mae_deg(pred, true) == pytest.approx([179.0 / 3, 1.0])
    assert mae_deg(pred, true) == pytest.approx((179.0 / 3 + 1.0) / 2)
    per_axis = mae_per_axis_deg(pred, true)
    assert per_axis == pytest.approx({"roll": 1.5, "pitch": 0.0, "yaw": 89.5})


def pose(yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    return np.array([roll, pitch, yaw])


@pytest.mark.parametrize("a, b, distance", [
    (pose(0, 0), pose(90, 0), 90.0),
    (pose(0, 0), pose(180, 0), 180.0),
    (pose(179, 0), pose(-179, 0), 2.0),
    (pose(0, 0), pose(0, 90), 90.0),
    (pose(0, 90), pose(123, 90), 0.0),  # both at the pole: yaw is meaningless
    (pose(0, 45), pose(180, 45), 90.0),
    (pose(10, 0), pose(10, -30), 30.0),
    (pose(0, 0, roll=40), pose(0, 0, roll=-70), 0.0),  # roll does not move the view centre
    (pose(0, 60), pose(90, 60), 41.40962210927086),  # acos(sin^2 60)
])
def test_great_circle_known_cases(a: np.ndarray, b: np.ndarray, distance: float) -> None:
    assert float(great_circle_deg(a, b)) == pytest.approx(distance, abs=1e-9)


@given(angles, pitches, angles, pitches)
def test_great_circle_properties(y1: float, p1: float, y2: float, p2: float) -> None:
    a, b = pose(y1, p1), pose(y2, p2)
    d = float(great_circle_deg(a, b))
    assert 0.0 <= d <= 180.0 + 1e-9
    assert d == pytest.approx(float(great_circle_deg(b, a)), abs=1e-9)
    # never more than the yaw difference plus the pitch difference
    assert d <= float(angle_errors_deg(np.array(y1), np.array(y2))) + abs(p1 - p2) + 1e-7


def test_great_circle_is_accurate_for_tiny_angles() -> None:
    assert float(great_circle_deg(pose(0, 0), pose(1e-7, 0))) == pytest.approx(1e-7, rel=1e-6)


def test_score_windows_shapes_and_errors() -> None:
    true = np.zeros((4, 20, 3))
    pred = true.copy()
    pred[:, :, 2] = np.linspace(0, 19, 20)[None, :]
    mae, great_circle = score_windows(pred, true)
    assert mae.shape == (4,) and great_circle.shape == (4, 20)
    np.testing.assert_allclose(great_circle[0], np.linspace(0, 19, 20), atol=1e-9)
    with pytest.raises(ValueError):
        score_windows(pred[:, :10], true)
