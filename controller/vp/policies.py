"""The one VP policy interface, its registry, and the classic baselines.

A policy maps a history of poses (H, 3) (roll, pitch, yaw in degrees, oldest first, one sample per step of the
trace's rate, 5 Hz in the reference data) to the next `horizon` poses (horizon, 3). The same instance serves
the in-process evaluator (`emulation.vp_replay.evaluate_policy`, through `predict_batch`) and the controller
(`POST /v1/vp/predict`, through `predict`).

Plug-in points for learned models (names reserved in the registry, modules written later):
- `track` -> `controller.vp.track:TrackPolicy`: TRACK-style position-only recurrent model;
- `netllm-vp` -> `controller.vp.netllm_vp:NetllmVpPolicy`: the LLM adapted to VP.
A model subclasses `VpPolicy`, takes its checkpoint and options as constructor keyword arguments (the
controller's and `netllm vp-eval --policy-options` pass them), sets `blocking = True` (the controller then
runs it on its worker thread), `history_len = 10` when it needs exactly that many samples, and implements
`predict_batch` vectorised. Content-aware models read `contexts` (dataset, video, user, history times).
Until such a module exists, its name raises `VpPolicyUnavailableError` (the controller answers 503).

Outputs: roll and yaw wrapped into [-180, 180), pitch within [-90, 90] (`normalize_poses`).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from traces.headmove import HORIZON_LEN, wrap_deg


@dataclass(frozen=True)
class VpContext:
    """What a request knows besides the poses (content-aware models use it; baselines ignore it)."""
    session_id: str = ""
    dataset: str = ""
    video_id: str = ""
    user_id: str = ""
    history_time_s: np.ndarray | None = None


class VpPolicy:
    name: ClassVar[str] = "base"
    blocking: ClassVar[bool] = False
    """True for model inference: the controller calls it on its single worker thread."""
    stateful: ClassVar[bool] = False
    """True when predictions depend on earlier requests: the controller keeps one instance per session
    (otherwise one shared instance per policy name)."""
    history_len: ClassVar[int | None] = None
    """Exact history length the policy needs (learned models); None accepts any length >= min_history."""
    min_history: ClassVar[int] = 1

    def reset(self) -> None:
        """Forget the previous session (stateful policies)."""

    def predict(self, history_deg: np.ndarray, horizon: int = HORIZON_LEN,
                context: VpContext | None = None) -> np.ndarray:
        """The next `horizon` poses (horizon, 3) after the history (H, 3)."""
        history = check_histories(np.asarray(history_deg, dtype=np.float64)[None], self)
        contexts = None if context is None else [context]
        return self.predict_batch(history, horizon, contexts)[0]

    def predict_batch(self, histories_deg: np.ndarray, horizon: int = HORIZON_LEN,
                      contexts: Sequence[VpContext] | None = None) -> np.ndarray:
        """(N, H, 3) histories -> (N, horizon, 3) predictions."""
        raise NotImplementedError


def check_histories(histories_deg: np.ndarray, policy: VpPolicy | type[VpPolicy]) -> np.ndarray:
    """Float (N, H, 3) histories the policy accepts, or ValueError saying what is wrong."""
    array = np.asarray(histories_deg, dtype=np.float64)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"histories must be (N, H, 3) roll/pitch/yaw arrays, got shape {array.shape}")
    length = array.shape[1]
    if policy.history_len is not None and length != policy.history_len:
        raise ValueError(f"policy {policy.name!r} needs exactly {policy.history_len} history samples, "
                         f"got {length}")
    if length < policy.min_history:
        raise ValueError(f"policy {policy.name!r} needs at least {policy.min_history} history samples, "
                         f"got {length}")
    if not np.isfinite(array).all():
        raise ValueError("histories contain non-finite values")
    return array


def normalize_poses(poses_deg: np.ndarray, clip_pitch: bool = True) -> np.ndarray:
    """Roll and yaw wrapped into [-180, 180); pitch clipped into [-90, 90] (unless `clip_pitch` is False)."""
    out = np.array(poses_deg, dtype=np.float64, copy=True)
    out[..., 0] = wrap_deg(out[..., 0])
    out[..., 2] = wrap_deg(out[..., 2])
    if clip_pitch:
        out[..., 1] = np.clip(out[..., 1], -90.0, 90.0)
    return out


def unwrap_angles(histories_deg: np.ndarray) -> np.ndarray:
    """Roll and yaw made continuous along the history (a turn through +-180 is not a 360 degree jump)."""
    out = np.array(histories_deg, dtype=np.float64, copy=True)
    for axis in (0, 2):
        out[..., axis] = np.unwrap(out[..., axis], period=360.0, axis=1)
    return out


def _check_horizon(horizon: int) -> int:
    if isinstance(horizon, bool) or int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    return int(horizon)


# -- baselines -----------------------------------------------------------------------------------------------

class NoMotion(VpPolicy):
    """The viewer keeps the last pose."""
    name: ClassVar[str] = "no-motion"

    def predict_batch(self, histories_deg: np.ndarray, horizon: int = HORIZON_LEN,
                      contexts: Sequence[VpContext] | None = None) -> np.ndarray:
        history = check_histories(histories_deg, self)
        last = history[:, -1:, :]
        return normalize_poses(np.repeat(last, _check_horizon(horizon), axis=1))


class _Extrapolator(VpPolicy):
    """Shared options of the per-axis extrapolators.

    unwrap: make roll and yaw continuous over the history first (False reproduces NetLLM's baselines, which
        extrapolate the raw angles, so a turn through +-180 looks like a 360 degree swing);
    clip_pitch: keep predicted pitch within [-90, 90] (False: NetLLM's, unbounded)."""

    def __init__(self, unwrap: bool = True, clip_pitch: bool = True) -> None:
        self.unwrap = bool(unwrap)
        self.clip_pitch = bool(clip_pitch)

    def _prepare(self, histories_deg: np.ndarray) -> np.ndarray:
        history = check_histories(histories_deg, self)
        return unwrap_angles(history) if self.unwrap else history

    def _finish(self, poses_deg: np.ndarray) -> np.ndarray:
        return normalize_poses(poses_deg, clip_pitch=self.clip_pitch)


class LinearRegression(_Extrapolator):
    """Per axis, a least-squares line over the history's sample index, extrapolated. (NetLLM refits after
    appending each prediction; points on the fitted line do not move it, so that equals one fit.)"""
    name: ClassVar[str] = "linear-regression"

    def predict_batch(self, histories_deg: np.ndarray, horizon: int = HORIZON_LEN,
                      contexts: Sequence[VpContext] | None = None) -> np.ndarray:
        history = self._prepare(histories_deg)
        length = history.shape[1]
        steps = np.arange(length, dtype=np.float64)
        centred = steps - steps.mean()
        denominator = float(np.sum(centred ** 2))
        mean = history.mean(axis=1, keepdims=True)  # (N, 1, 3)
        slope = (np.einsum("h,nha->na", centred, history - mean) / denominator)[:, None, :] \
            if denominator > 0 else np.zeros_like(mean)
        ahead = np.arange(length, length + _check_horizon(horizon), dtype=np.float64) - steps.mean()
        return self._finish(mean + slope * ahead[None, :, None])


class Velocity(_Extrapolator):
    """Each window's mean angular velocity, (last - first) / (H - 1) per step, continued from the last
    pose."""
    name: ClassVar[str] = "velocity"

    def predict_batch(self, histories_deg: np.ndarray, horizon: int = HORIZON_LEN,
                      contexts: Sequence[VpContext] | None = None) -> np.ndarray:
        history = self._prepare(histories_deg)
        length = history.shape[1]
        velocity = (history[:, -1, :] - history[:, 0, :]) / (length - 1) if length > 1 \
            else np.zeros_like(history[:, -1, :])
        steps = np.arange(1, _check_horizon(horizon) + 1, dtype=np.float64)
        return self._finish(history[:, -1:, :] + velocity[:, None, :] * steps[None, :, None])


# -- registry ------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, str] = {
    "no-motion": "controller.vp.policies:NoMotion",
    "linear-regression": "controller.vp.policies:LinearRegression",
    "velocity": "controller.vp.policies:Velocity",
    "track": "controller.vp.track:TrackPolicy",
    "netllm-vp": "controller.vp.netllm_vp:NetllmVpPolicy",
}
RESERVED: dict[str, str] = {
    "track": "the TRACK-style position-only recurrent model (trained with `netllm train-vp`)",
    "netllm-vp": "NetLLM's LLM adapted to viewport prediction (trained with `netllm train-vp`)",
}
BASELINES: tuple[str, ...] = ("no-motion", "linear-regression", "velocity")


class UnknownVpPolicyError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class VpPolicyUnavailableError(ImportError):
    """A registered policy whose implementation cannot be imported here (not written yet, or a missing
    dependency)."""


def available_vp_policies() -> list[str]:
    """Every registered name (some may be unavailable in this build: see `vp_policy_class`)."""
    return sorted(_REGISTRY)


def vp_policy_class(name: str) -> type[VpPolicy]:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise UnknownVpPolicyError(f"unknown VP policy {name!r}; known: "
                                   f"{', '.join(available_vp_policies())}") from None
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            what = RESERVED.get(name, "its implementation")
            raise VpPolicyUnavailableError(f"VP policy {name!r} is reserved for {what}, which is not "
                                           f"installed in this build ({module_name} is missing)") from None
        raise VpPolicyUnavailableError(f"VP policy {name!r} cannot be loaded: {exc}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, VpPolicy)):
        raise VpPolicyUnavailableError(f"VP policy {name!r}: {target} is not a VpPolicy class")
    return cls


def make_vp_policy(name: str, **options: Any) -> VpPolicy:
    """A fresh, reset policy; options are the implementation's constructor arguments."""
    policy = vp_policy_class(name)(**options)
    policy.reset()
    return policy
