"""VP error metrics, vectorised over windows. Poses are (..., 3) arrays of roll, pitch, yaw in degrees.

- `angle_errors_deg`: |pred - true| per axis with each difference wrapped into [-180, 180] (179 vs -179 is
  2 degrees). NetLLM takes min(|d|, |d + 360|, |d - 360|), the same for inputs inside [-180, 180]; the wrap
  here also covers predictions outside that range.
- `mae_deg`: NetLLM's MAE, the mean of those errors over roll, pitch, yaw and every predicted step. All its
  windows have the same horizon, so the mean over windows of `window_mae_deg` equals NetLLM's global mean.
- `great_circle_deg`: the angle between the predicted and the true viewing directions (from yaw and pitch,
  see `traces.headmove` for the convention), per step; atan2 of cross and dot products stays accurate for
  tiny and near-180 degree angles where acos does not.
"""

from __future__ import annotations

import numpy as np

from traces.headmove import angles_to_vectors, wrap_deg

ROLL, PITCH, YAW = 0, 1, 2
AXES = ("roll", "pitch", "yaw")


def angle_errors_deg(pred_deg: np.ndarray, true_deg: np.ndarray) -> np.ndarray:
    """Absolute wrapped differences, same shape as the inputs; in [0, 180]."""
    diff = wrap_deg(np.asarray(pred_deg, dtype=np.float64) - np.asarray(true_deg, dtype=np.float64))
    return np.abs(diff)


def window_mae_deg(pred_deg: np.ndarray, true_deg: np.ndarray) -> np.ndarray:
    """MAE of each window: (N, F, 3) -> (N,); a single window (F, 3) -> scalar array."""
    return angle_errors_deg(pred_deg, true_deg).mean(axis=(-2, -1))


def mae_deg(pred_deg: np.ndarray, true_deg: np.ndarray) -> float:
    """NetLLM's MAE over all windows, steps and axes."""
    return float(angle_errors_deg(pred_deg, true_deg).mean())


def mae_per_axis_deg(pred_deg: np.ndarray, true_deg: np.ndarray) -> dict[str, float]:
    errors = angle_errors_deg(pred_deg, true_deg).reshape(-1, 3)
    return {axis: float(errors[:, i].mean()) for i, axis in enumerate(AXES)}


def great_circle_deg(pred_deg: np.ndarray, true_deg: np.ndarray) -> np.ndarray:
    """Angle in [0, 180] between predicted and true viewing directions, per pose: (..., 3) -> (...)."""
    pred = np.asarray(pred_deg, dtype=np.float64)
    true = np.asarray(true_deg, dtype=np.float64)
    a = angles_to_vectors(pred[..., YAW], pred[..., PITCH])
    b = angles_to_vectors(true[..., YAW], true[..., PITCH])
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    dot = np.sum(a * b, axis=-1)
    return np.degrees(np.arctan2(cross, dot))


def score_windows(pred_deg: np.ndarray, true_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-window MAE (N,), per-step great-circle error (N, F)) of (N, F, 3) predictions."""
    pred = np.asarray(pred_deg, dtype=np.float64)
    true = np.asarray(true_deg, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"predictions {pred.shape} and truth {true.shape} must both be (N, F, 3)")
    return window_mae_deg(pred, true), great_circle_deg(pred, true)
