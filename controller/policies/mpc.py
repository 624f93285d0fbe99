"""Model-predictive control ABR (Yin et al., SIGCOMM'15) as Pensieve, Genet and NetLLM evaluate it.

Three registered variants share one search:
- `robustmpc`: Pensieve's `test/mpc.py`. Bandwidth prediction = harmonic mean of the last 5 throughputs
  divided by (1 + the largest relative prediction error of the last 5 decisions); all L^h plans are searched.
- `fastmpc`: the same search with the plain harmonic mean (no error discount), Pensieve's non-robust MPC.
- `robustmpc-pm1`: robustMPC over the plans whose every step moves at most one ladder level from the step
  before (the first from `last_quality`): the variant Genet's simulator (`jump_action_flag`) and NetLLM's
  baseline runner use and call "MPC".

Choices that follow Pensieve's mpc.py (and Genet's/NetLLM's copies of it):
- Decisions happen after a download. With no measured throughput yet (the first chunk) the policy returns
  `last_quality`, the player's default quality: Pensieve downloads the first chunk at DEFAULT_QUALITY without
  running MPC.
- Error memory: at each decision, error = |previous prediction - newest throughput| / newest throughput, where
  "previous prediction" is the previous decision's *undiscounted* harmonic mean (Pensieve appends
  `harmonic_bandwidth`, not `future_bandwidth`, to `past_bandwidth_ests`); the first decision of a session
  records error 0. The discount uses the max over the last 5 errors, the just-computed one included.
- Harmonic mean over the last 5 throughputs (fewer when fewer exist; non-positive samples skipped).
- Horizon h = min(5, chunks remaining including the one being decided, rows of upcoming sizes given); with
  long ladders h is further shortened to keep at most MAX_PLANS plans (no effect on 6-rung ladders).
- Per plan: download time = size / predicted bandwidth; rebuffer += max(dt - buffer, 0);
  buffer = max(buffer - dt, 0) + chunk duration; QoE = sum(bitrate Mbps) - 4.3 * rebuffer
  - sum(|switch| Mbps), the first switch measured from `last_quality` (constants from netllm.qoe).
  The first action of the best plan is returned.
- Ties go to the plan enumerated last in lexicographic order (Pensieve keeps a plan when `reward >= max`).

Deliberate differences, documented:
- Pensieve/Genet/NetLLM look up the size of chunk n+1 when planning chunk n
  (`index = last_index + position + 1` with `last_index` already one past the downloaded chunk); here the
  plan for chunk n uses chunk n's sizes (`obs.upcoming_chunk_sizes_bytes` row 0).
- Pensieve's `past_errors` is a module global that survives from one trace to the next; here it lives in the
  instance and `reset()` clears it, so sessions are independent.
- A second call for the same `chunk_index` (a player retrying a request) does not record a second error: the
  memory is rolled back to its state before the first call for that chunk.

The search is vectorised with numpy. For the full plan set the buffer is simulated over the prefix tree of the
plans (L, L^2, ..., L^h nodes), which is exactly lexicographic order; restricted plan sets gather per-plan
download times. Plan tables and their network-independent QoE parts are cached per (ladder, horizon,
last quality) at class level.
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar

import numpy as np

from controller.policies.base import AbrPolicy
from controller.policies.rate_based import HISTORY_WINDOW, harmonic_mean_kbps
from netllm.abr_state import AbrObservation
from netllm.qoe import REBUFFER_PENALTY, SMOOTH_PENALTY

MPC_HORIZON: int = 5
ERROR_WINDOW: int = 5
BITS_PER_BYTE_KILO: float = 8.0 / 1000.0
"""bytes * this / kbps = seconds."""
MAX_PLANS: int = 65_536
"""Upper bound on the plans searched per decision (6 rungs x 5 steps = 7,776 is well inside); keeps a
request with a 16-rung ladder from stalling the service."""
_CACHE_LIMIT = 64


def all_plans(levels: int, horizon: int) -> np.ndarray:
    """Every plan of `horizon` steps, shape (levels**horizon, horizon), in itertools.product order."""
    return np.indices((levels,) * horizon, dtype=np.intp).reshape(horizon, -1).T.copy()


def capped_horizon(levels: int, horizon: int) -> int:
    """The horizon shortened until the full plan set has at most MAX_PLANS plans (16 rungs: 4 steps)."""
    while horizon > 1 and levels ** horizon > MAX_PLANS:
        horizon -= 1
    return horizon


def bounded_step_plans(levels: int, horizon: int, start_quality: int, max_step: int = 1) -> np.ndarray:
    """Plans whose every step moves at most `max_step` levels (the first from `start_quality`),
    in lexicographic order, as Genet's `calculate_jump_action_combo` filters them."""
    plans: list[tuple[int, ...]] = []

    def extend(prefix: tuple[int, ...], previous: int) -> None:
        if len(prefix) == horizon:
            plans.append(prefix)
            return
        for q in range(max(0, previous - max_step), min(levels - 1, previous + max_step) + 1):
            extend(prefix + (q,), q)

    extend((), start_quality)
    return np.array(plans, dtype=np.intp).reshape(-1, horizon)


def plan_constant_terms(ladder_kbps: np.ndarray, plans: np.ndarray,
                        last_quality: int) -> tuple[np.ndarray, np.ndarray]:
    """The parts of each plan's QoE that do not depend on the network: (sum of bitrates, sum of |switches|),
    both in Mbps, the first switch measured from `last_quality`."""
    bitrates = ladder_kbps[plans]
    previous = np.concatenate([np.full((len(plans), 1), ladder_kbps[last_quality]), bitrates[:, :-1]], axis=1)
    bitrate_mbps = bitrates.sum(axis=1) / 1000.0
    switch_mbps = np.abs(bitrates - previous).sum(axis=1) / 1000.0
    return bitrate_mbps, switch_mbps


def rebuffer_prefix_tree(download_s: np.ndarray, buffer_s: float, chunk_s: float) -> np.ndarray:
    """Total rebuffering of every plan in the full plan set, in lexicographic order.

    `download_s[k, q]` is the predicted download time of step k at quality q. Node arrays of step k hold the
    L^(k+1) plan prefixes; extending a prefix by every quality is an outer operation, whose ravel() is
    lexicographic order again. `stall = dt - buffer` is computed once per node: its positive part is the
    rebuffering, and max(-stall, 0) = max(buffer - dt, 0) the buffer left (IEEE negation is exact)."""
    horizon = download_s.shape[0]
    buffer = np.array([buffer_s])
    rebuffer = np.zeros(1)
    for k in range(horizon):
        stall = np.subtract.outer(buffer, download_s[k])
        np.negative(stall, out=stall)  # dt - buffer
        if k + 1 < horizon:
            buffer = np.maximum(np.negative(stall), 0.0).ravel()
            buffer += chunk_s
        np.maximum(stall, 0.0, out=stall)
        stall += rebuffer[:, None]
        rebuffer = stall.ravel()
    return rebuffer


def rebuffer_gathered(download_s: np.ndarray, plans: np.ndarray, buffer_s: float,
                      chunk_s: float) -> np.ndarray:
    """Total rebuffering of each listed plan (any plan set), by gathering per-plan download times."""
    horizon, levels = download_s.shape
    times = download_s.ravel()[plans + np.arange(horizon) * levels]  # (P, h)
    buffer = np.full(len(plans), buffer_s)
    rebuffer = np.zeros(len(plans))
    for k in range(horizon):
        left = buffer - times[:, k]
        rebuffer += np.maximum(-left, 0.0)
        buffer = np.maximum(left, 0.0) + chunk_s
    return rebuffer


def last_argmax(values: np.ndarray) -> int:
    """Index of the last maximum (Pensieve's `>=` keeps the last of equal rewards)."""
    return len(values) - 1 - int(np.argmax(values[::-1]))


class _PlanSet:
    """One plan set with its network-independent QoE terms."""

    __slots__ = ("plans", "bitrate_mbps", "switch_mbps", "full_tree")

    def __init__(self, plans: np.ndarray, ladder_kbps: np.ndarray, last_quality: int,
                 full_tree: bool) -> None:
        self.plans = plans
        self.bitrate_mbps, self.switch_mbps = plan_constant_terms(ladder_kbps, plans, last_quality)
        self.full_tree = full_tree


class MpcBase(AbrPolicy):
    """The shared MPC search; subclasses choose the bandwidth predictor and the plan set."""

    name: ClassVar[str] = "mpc-base"
    robust: ClassVar[bool] = True
    max_step: ClassVar[int | None] = None
    """None: all plans; k: plans moving at most k levels per step."""
    _plan_sets: ClassVar[dict[tuple, _PlanSet]] = {}
    """(ladder, horizon, last quality, max_step) -> plan set with its QoE terms; bounded by _CACHE_LIMIT."""
    _plans: ClassVar[dict[tuple, np.ndarray]] = {}
    """(levels, horizon, start quality or None, max_step) -> plan array, shared by every ladder."""

    def __init__(self, horizon: int = MPC_HORIZON, window: int = HISTORY_WINDOW) -> None:
        if not 1 <= horizon <= 8:
            raise ValueError("MPC horizon must be in 1..8")
        self.horizon = int(horizon)
        self.window = int(window)
        self.reset()

    def reset(self) -> None:
        self._errors: deque[float] = deque(maxlen=ERROR_WINDOW)
        self._last_estimate_kbps: float | None = None
        self._last_chunk_index: int | None = None
        self._undo: tuple[tuple[float, ...], float | None] | None = None
        self.last_prediction_kbps: float | None = None
        """The (discounted) bandwidth the last search used; for logs and tests."""

    # -- bandwidth prediction -------------------------------------------------------------------------------
    def _predict_kbps(self, obs: AbrObservation, harmonic_kbps: float) -> float:
        if not self.robust:
            return harmonic_kbps
        if obs.chunk_index == self._last_chunk_index and self._undo is not None:
            errors, estimate = self._undo  # a retried request: forget what the first attempt recorded
            self._errors = deque(errors, maxlen=ERROR_WINDOW)
            self._last_estimate_kbps = estimate
        self._undo = (tuple(self._errors), self._last_estimate_kbps)
        self._last_chunk_index = obs.chunk_index
        newest_kbps = obs.throughput_kbps_history[-1]
        error = 0.0  # Pensieve: the first decision has no earlier prediction to compare
        if self._last_estimate_kbps is not None and newest_kbps > 0:
            error = abs(self._last_estimate_kbps - newest_kbps) / newest_kbps
        self._errors.append(error)
        self._last_estimate_kbps = harmonic_kbps  # undiscounted, as Pensieve stores it
        return harmonic_kbps / (1.0 + max(self._errors))

    # -- plan search ----------------------------------------------------------------------------------------
    def _plan_set(self, ladder: tuple[float, ...], horizon: int, last_quality: int) -> _PlanSet:
        full = self.max_step is None
        key = (ladder, horizon, last_quality, self.max_step)
        plan_set = self._plan_sets.get(key)
        if plan_set is None:
            levels = len(ladder)
            plans_key = (levels, horizon, None if full else last_quality, self.max_step)
            plans = self._plans.get(plans_key)
            if plans is None:
                plans = (all_plans(levels, horizon) if full
                         else bounded_step_plans(levels, horizon, last_quality, self.max_step))
                self._plans[plans_key] = plans  # at most 16 levels x 8 horizons x 17 starts: bounded
            if len(self._plan_sets) >= _CACHE_LIMIT:
                self._plan_sets.clear()
            plan_set = _PlanSet(plans, np.asarray(ladder, dtype=np.float64), last_quality, full)
            self._plan_sets[key] = plan_set
        return plan_set

    def plan_rewards(self, obs: AbrObservation, bandwidth_kbps: float) -> tuple[np.ndarray, np.ndarray]:
        """(plans, predicted QoE of each plan) for this observation and predicted bandwidth."""
        horizon = min(self.horizon, obs.chunks_remaining, len(obs.upcoming_chunk_sizes_bytes))
        horizon = capped_horizon(obs.levels, horizon)
        plan_set = self._plan_set(tuple(obs.ladder_kbps), horizon, obs.last_quality)
        sizes = np.array(obs.upcoming_chunk_sizes_bytes[:horizon], dtype=np.float64)
        download_s = sizes * (BITS_PER_BYTE_KILO / bandwidth_kbps)
        if plan_set.full_tree:
            rebuffer_s = rebuffer_prefix_tree(download_s, obs.buffer_s, obs.chunk_duration_s)
        else:
            rebuffer_s = rebuffer_gathered(download_s, plan_set.plans, obs.buffer_s, obs.chunk_duration_s)
        # Same order of operations as Pensieve: bitrate - rebuffer penalty - smoothness penalty.
        rewards = plan_set.bitrate_mbps - REBUFFER_PENALTY * rebuffer_s
        rewards -= SMOOTH_PENALTY * plan_set.switch_mbps
        return plan_set.plans, rewards

    def select_quality(self, obs: AbrObservation) -> int:
        harmonic_kbps = harmonic_mean_kbps(obs.throughput_kbps_history, self.window)
        if harmonic_kbps is None:
            return obs.last_quality  # no measurement yet: the default quality, as Pensieve's first chunk
        bandwidth_kbps = self._predict_kbps(obs, harmonic_kbps)
        self.last_prediction_kbps = bandwidth_kbps
        plans, rewards = self.plan_rewards(obs, bandwidth_kbps)
        return int(plans[last_argmax(rewards), 0])


class RobustMPC(MpcBase):
    name: ClassVar[str] = "robustmpc"
    robust: ClassVar[bool] = True
    max_step: ClassVar[int | None] = None


class FastMPC(MpcBase):
    name: ClassVar[str] = "fastmpc"
    robust: ClassVar[bool] = False
    max_step: ClassVar[int | None] = None


class RobustMPCPlusMinusOne(MpcBase):
    name: ClassVar[str] = "robustmpc-pm1"
    robust: ClassVar[bool] = True
    max_step: ClassVar[int | None] = 1
