"""VP policies: baselines on synthetic motions, batch = single, the registry and its reserved names."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.vp.policies import (
    BASELINES,
    RESERVED,
    LinearRegression,
    NoMotion,
    UnknownVpPolicyError,
    Velocity,
    VpPolicyUnavailableError,
    available_vp_policies,
    make_vp_policy,
    vp_policy_class,
)
from traces.headmove import wrap_deg


def constant_velocity(start: np.ndarray, velocity: np.ndarray, steps: np.ndarray) -> np.ndarray:
    poses = start[None, :] + velocity[None, :] * steps[:, None]
    poses[:, 0] = wrap_deg(poses[:, 0])
    poses[:, 2] = wrap_deg(poses[:, 2])
    return poses


def circular_error(a: np.ndarray, b: np.ndarray) -> float:
    diff = a - b
    diff[..., [0, 2]] = wrap_deg(diff[..., [0, 2]])
    return float(np.abs(diff).max())


@pytest.mark.parametrize("name", ["velocity", "linear-regression"])
@pytest.mark.parametrize("velocity", [[0.5, 1.0, 8.0], [-2.0, -0.7, -15.0], [0.0, 0.0, 0.0]])
def test_extrapolators_are_exact_on_constant_velocity(name: str, velocity: list[float]) -> None:
    # yaw starts at 150 and crosses +-180 inside the history or the horizon
    start, v = np.array([5.0, -10.0, 150.0]), np.array(velocity)
    history = constant_velocity(start, v, np.arange(10.0))
    truth = constant_velocity(start, v, np.arange(10.0, 30.0))
    prediction = make_vp_policy(name).predict(history, 20)
    assert prediction.shape == (20, 3)
    assert circular_error(prediction, truth) < 1e-9
    assert np.all(np.abs(prediction[:, [0, 2]]) <= 180.0)


def test_no_motion_repeats_the_last_pose() -> None:
    history = np.array([[0.0, 1.0, 2.0]] * 9 + [[3.0, -4.0, 179.5]])
    prediction = NoMotion().predict(history, 7)
    np.testing.assert_array_equal(prediction, np.repeat(history[-1:], 7, axis=0))


def test_netllm_mode_does_not_unwrap_and_does_not_clip() -> None:
    history = constant_velocity(np.array([0.0, 80.0, 170.0]), np.array([0.0, 1.0, 5.0]), np.arange(10.0))
    faithful = Velocity(unwrap=False, clip_pitch=False).predict(history, 20)
    ours = Velocity().predict(history, 20)
    assert faithful[-1, 1] > 90.0 and ours[-1, 1] == 90.0  # pitch
    # raw yaw history 170 .. -145 has a mean step of -35 degrees; unwrapped it is +5
    assert abs(wrap_deg(faithful[0, 2] - (-145.0 - 35.0))) < 1e-9
    assert abs(wrap_deg(ours[0, 2] - (-145.0 + 5.0))) < 1e-9


def test_linear_regression_matches_a_least_squares_fit() -> None:
    rng = np.random.default_rng(7)
    steps = np.arange(10.0)
    history = np.zeros((10, 3))
    history[:, 1] = 2.0 * steps - 30.0 + rng.normal(0.0, 3.0, 10)
    slope, intercept = np.polyfit(steps, history[:, 1], 1)
    prediction = LinearRegression().predict(history, 3)
    np.testing.assert_allclose(prediction[:, 1], slope * np.arange(10.0, 13.0) + intercept, atol=1e-9)
    np.testing.assert_allclose(prediction[:, [0, 2]], 0.0, atol=1e-12)


@given(st.integers(1, 12), st.integers(1, 25), st.integers(0, 2 ** 31 - 1))
def test_batch_equals_single_and_outputs_are_normalised(length: int, horizon: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    histories = np.stack([rng.uniform(-180, 180, (3, length)), rng.uniform(-90, 90, (3, length)),
                          rng.uniform(-180, 180, (3, length))], axis=-1)
    for name in BASELINES:
        policy = make_vp_policy(name)
        batch = policy.predict_batch(histories, horizon)
        assert batch.shape == (3, horizon, 3) and np.isfinite(batch).all()
        assert np.all(np.abs(batch[..., 1]) <= 90.0) and np.all(batch[..., [0, 2]] < 180.0)
        for i in range(3):
            np.testing.assert_allclose(policy.predict(histories[i], horizon), batch[i], atol=1e-9)


@pytest.mark.parametrize("bad", [np.zeros((10, 2)), np.zeros((0, 3)), np.full((10, 3), np.nan)])
def test_bad_histories_raise(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        Velocity().predict(bad)


def test_bad_horizon_raises() -> None:
    with pytest.raises(ValueError, match="horizon"):
        NoMotion().predict(np.zeros((10, 3)), 0)


def test_registry() -> None:
    assert set(BASELINES) | set(RESERVED) == set(available_vp_policies())
    assert vp_policy_class("velocity") is Velocity
    with pytest.raises(UnknownVpPolicyError, match="unknown VP policy 'nope'; known:"):
        vp_policy_class("nope")
    with pytest.raises(TypeError):
        make_vp_policy("velocity", bogus=1)


@pytest.mark.parametrize("name", sorted(RESERVED))
def test_reserved_names_are_clear_until_implemented(name: str) -> None:
    try:
        cls = vp_policy_class(name)
    except VpPolicyUnavailableError as exc:
        assert name in str(exc) and "not installed" in str(exc)
    else:  # implemented by now: it must be a real VpPolicy
        assert cls.name == name
