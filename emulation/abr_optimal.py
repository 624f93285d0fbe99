"""The offline optimum: an upper bound on the QoE any policy can reach on a known trace (policy `optimal`).

The simulator's dynamics are deterministic without noise, so with the whole trace known the best quality
sequence is a search problem. Searching the simulator exactly is hard because its forced sleeps at the buffer
cap make "more buffer" occasionally worse, which breaks every simple dominance rule. So the search runs on
relaxations (models in which a player can do everything the simulator's player can, and more) whose optimum
is found exactly by a forward search with a provably safe dominance rule. Each relaxation's optimum is an
upper bound on every policy; its plan replayed in the real simulator is an achievable QoE. Where the two
meet, the bound is the simulator's exact optimum.

State after n chunks (per last quality): position T (trace seconds since the session start), playback
deadline E (wall time at which the buffer runs dry; wall = T + n*RTT, since RTTs do not consume trace time
and sleeps advance both) and R, the QoE of chunks 1..n-1 so far. A dominates B when T_A <= T_B, R_A >= R_B
and R_A + 4.3 E_A >= R_B + 4.3 E_B: a later deadline is worth at most 4.3 QoE a second (it can only save that
much stalling). A download preserves dominance (an earlier start never finishes later, and a stall difference
is paid for in R). The relaxations differ only at the cap:

1. no cap: the buffer may grow without bound (one successor per action; fast; exact on most traces);
2. sleep-or-discard with k pieces: with x seconds over the cap the player may sleep s in [0, x] and discard
   x - s (the simulator always sleeps ceil(x / 0.5 s) * 0.5 s >= x, which s = x dominates); each of k equal
   sub-intervals of s is represented by one point that dominates it (earliest position, latest deadline),
   rounded outwards to a 1 ms grid so that states from different paths merge.

`solve` runs relaxation 1, then 2 with 2 and 4 pieces while the bound and its replayed plan differ; the
reported bound is the smallest bound found, the achievable value the best replay. Branch and bound prunes
states whose reward plus the most the remaining chunks could add (top bitrate, no stall) is below a QoE a
real plan reaches (the best constant-quality plan or an earlier replay).

Objective: the total (then mean) QoE of chunks 1..N-1, chunk 0 at the default quality, as the harness
measures every policy. Deterministic mode only (no delay noise).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from controller.policies.base import AbrPolicy
from emulation.abr_sim import (PreparedTrace, PreparedVideo, SessionResult, SimConfig, prepare,
                               simulate_session)
from netllm.abr_state import AbrObservation
from netllm.qoe import REBUFFER_PENALTY, SMOOTH_PENALTY
from netllm.video import Video
from traces.bandwidth import BandwidthTrace

GRID_S = 1e-3
"""Grid (s) onto which capped states are rounded outwards (position down, deadline up)."""
REFINEMENTS: tuple[int | None, ...] = (None, 2, 4)
"""Relaxations tried in turn: None = no cap, k = sleep-or-discard with k pieces."""
EXACT_TOLERANCE = 1e-9


@dataclass
class OptimalResult:
    trace: str
    start_index: int
    mean_qoe: float
    """Upper bound on the mean per-chunk QoE (chunks 1..) any policy reaches on this session."""
    plan_mean_qoe: float
    """Mean QoE of the best plan found, replayed in the simulator: achievable, <= the true optimum."""
    plan: list[int]
    """Quality per chunk of that plan."""
    relaxations: list[str]
    """Relaxations searched, in order ("no-cap", "discard-2", ...)."""
    states_explored: int
    max_front: int

    @property
    def exact(self) -> bool:
        """True when the bound is reached by a real plan, i.e. it is the simulator's optimum."""
        return self.mean_qoe - self.plan_mean_qoe <= EXACT_TOLERANCE


@dataclass
class _Search:
    total: float
    plan: list[int]
    explored: int
    max_front: int


class _Unrolled:
    """The looping trace laid out from a start index: cumulative bytes against trace seconds since start."""

    def __init__(self, trace: PreparedTrace, start_index: int, payload_fraction: float, total_bytes: float,
                 idle_s: float):
        trace.check_start(start_index)
        t, r = trace.time_s, trace.rate_bytes_per_s
        first = [(t[i] - t[i - 1], r[i] * payload_fraction) for i in range(start_index, trace.samples)]
        loop = [(t[i] - t[i - 1], r[i] * payload_fraction) for i in range(1, trace.samples)]
        per_loop_bytes = sum(d * x for d, x in loop)
        per_loop_s = t[-1] - t[0]
        loops = int(total_bytes // per_loop_bytes) + int(idle_s // per_loop_s) + 3
        segs = np.array(first + loop * loops, dtype=np.float64)
        duration, self.rate = segs[:, 0], segs[:, 1]
        self.cum_end = np.cumsum(duration * self.rate)
        self.cum_start = self.cum_end - duration * self.rate
        self.time_end = np.cumsum(duration)
        self.time_start = self.time_end - duration

    def delivered(self, position_s: np.ndarray) -> np.ndarray:
        """Bytes the link carries from the start until `position_s`."""
        j = np.searchsorted(self.time_end, position_s, side="right")
        return self.cum_start[j] + (position_s - self.time_start[j]) * self.rate[j]

    def position(self, sent_bytes: np.ndarray) -> np.ndarray:
        """Trace time when `sent_bytes` have been delivered (Pensieve's walk: the chunk finishes inside the
        first interval whose end would overshoot)."""
        j = np.searchsorted(self.cum_end, sent_bytes, side="right")
        return self.time_start[j] + (sent_bytes - self.cum_start[j]) / self.rate[j]


def _prune(b: np.ndarray, r: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Indices of the candidates no other candidate dominates (min b, max r, max g)."""
    order = np.lexsort((-g, -r, b))
    keep: list[int] = []
    rs: list[float] = []   # staircase of kept (r, g): r ascending, g descending
    ngs: list[float] = []  # -g, ascending
    for i in order.tolist():
        ri, gi = r[i], g[i]
        k = bisect.bisect_left(rs, ri)
        if k < len(rs) and -ngs[k] >= gi:
            continue
        k2 = bisect.bisect_right(rs, ri)
        j = bisect.bisect_left(ngs, -gi, 0, k)
        del rs[j:k2], ngs[j:k2]
        rs.insert(j, ri)
        ngs.insert(j, -gi)
        keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def solve(trace: BandwidthTrace | PreparedTrace, video: Video | PreparedVideo, start_index: int = 1,
          config: SimConfig = SimConfig(),
          refinements: tuple[int | None, ...] = REFINEMENTS) -> OptimalResult:
    """Upper bound on the session's mean QoE and the best real plan found (see the module docstring)."""
    if config.noise:
        raise ValueError("the offline optimum needs deterministic mode (noise off)")
    pt, pv = prepare(trace, video, config)
    denom = max(pv.chunk_count - 1, 1)
    floor_total, best_plan = _best_constant_plan(pt, pv, start_index, config)
    bound_total = np.inf
    names, explored, max_front = [], 0, 0
    for pieces in refinements:
        found = _search(pt, pv, start_index, config, pieces, floor_total)
        names.append("no-cap" if pieces is None else f"discard-{pieces}")
        explored += found.explored
        max_front = max(max_front, found.max_front)
        bound_total = min(bound_total, found.total)
        replayed = sum(replay_plan(found.plan, pt, pv, start_index, config).qoe[1:])
        if replayed > floor_total:
            floor_total, best_plan = replayed, found.plan
        if bound_total - floor_total <= EXACT_TOLERANCE * denom:
            break
    return OptimalResult(pt.name, start_index, float(max(bound_total, floor_total)) / denom,
                         float(floor_total) / denom, best_plan, names, explored, max_front)


def _search(pt: PreparedTrace, pv: PreparedVideo, start_index: int, config: SimConfig, pieces: int | None,
            floor_total: float) -> _Search:
    """Exact optimum (total QoE of chunks 1..) of one relaxation, by forward search with dominance pruning."""
    n_chunks, levels = pv.chunk_count, pv.levels
    sizes = np.asarray(pv.sizes_by_chunk, dtype=np.float64)
    ladder = np.asarray(pv.ladder_kbps, dtype=np.float64)
    unrolled = _Unrolled(pt, start_index, config.payload_fraction, float(sizes.max(axis=1).sum()),
                         n_chunks * (pv.chunk_duration_s + config.drain_step_s))
    rtt_s, chunk_s, cap_s = config.rtt_s, pv.chunk_duration_s, config.buffer_cap_s
    gain = ladder / 1000.0
    switch = SMOOTH_PENALTY * np.abs(ladder[:, None] - ladder[None, :]) / 1000.0  # [previous, next]
    first = [config.default_quality] if config.default_quality is not None else list(range(levels))
    pos, deadline, reward = np.zeros(1), np.zeros(1), np.zeros(1)
    last_q = np.zeros(1, dtype=np.int64)
    history: list[tuple[np.ndarray, np.ndarray]] = []  # per chunk: (parent index, quality) of kept states
    explored, max_front = 0, 1
    for n in range(n_chunks):
        choices = first if n == 0 else list(range(levels))
        delivered = unrolled.delivered(pos)
        parts = []
        for q in choices:
            finish = unrolled.position(delivered + sizes[n, q])
            finish_wall = finish + (n + 1) * rtt_s
            stall = np.maximum(finish_wall - deadline, 0.0)
            new_deadline = np.maximum(deadline, finish_wall) + chunk_s
            new_reward = reward.copy() if n == 0 else (
                reward + gain[q] - REBUFFER_PENALTY * stall - switch[last_q, q])
            if pieces is None:
                parts.append((np.arange(finish.size), finish, new_deadline, new_reward))
            else:
                parts.append(_cap_successors(finish, finish_wall, new_deadline, new_reward, cap_s, pieces))
            parts[-1] += (np.full(parts[-1][0].size, q, dtype=np.int64),)
        p_all, t_all, e_all, r_all, q_all = (np.concatenate([part[i] for part in parts]) for i in range(5))
        explored += p_all.size
        alive = r_all + (n_chunks - 1 - n) * gain[-1] >= floor_total - 1e-9
        kept_parts = []
        for q in choices:
            idx = np.flatnonzero((q_all == q) & alive)
            kept_parts.append(idx[_prune(t_all[idx], r_all[idx], r_all[idx] + REBUFFER_PENALTY * e_all[idx])])
        kept = np.concatenate(kept_parts)
        if kept.size == 0:  # every state is provably below the floor: the floor plan is optimal
            return _Search(-np.inf, [], explored, max_front)
        pos, deadline, reward, last_q = t_all[kept], e_all[kept], r_all[kept], q_all[kept]
        history.append((p_all[kept], q_all[kept]))
        max_front = max(max_front, int(kept.size))
    best = int(np.argmax(reward))
    return _Search(float(reward[best]), _backtrack(history, best), explored, max_front)


def _cap_successors(finish: np.ndarray, finish_wall: np.ndarray, deadline: np.ndarray, reward: np.ndarray,
                    cap_s: float, pieces: int) -> tuple[np.ndarray, ...]:
    """(parent, position, deadline, reward) after the cap in the sleep-or-discard relaxation."""
    parent = np.arange(finish.size)
    over = deadline - finish_wall - cap_s
    capped = over > 0
    if not capped.any():
        return parent, finish, deadline, reward
    counts = np.where(capped, pieces, 1)
    rep = np.repeat(parent, counts)
    k = np.arange(rep.size) - np.repeat(np.cumsum(counts) - counts, counts)
    x = np.maximum(over[rep], 0.0)
    width = x / pieces
    # Piece k stands for sleeping s in [k*width, (k+1)*width] and discarding the rest of x: its earliest
    # position and latest deadline, rounded outwards to the grid.
    pos = np.where(capped[rep], np.floor((finish[rep] + k * width) / GRID_S) * GRID_S, finish[rep])
    new_deadline = np.where(capped[rep], np.ceil((deadline[rep] - x + (k + 1) * width) / GRID_S) * GRID_S,
                            deadline[rep])
    return rep, pos, new_deadline, reward[rep]


def _best_constant_plan(pt: PreparedTrace, pv: PreparedVideo, start_index: int,
                        config: SimConfig) -> tuple[float, list[int]]:
    """The best constant-quality plan's total QoE (chunks 1..) in the simulator: the search's first floor."""
    best, plan = -np.inf, [0] * pv.chunk_count
    first = config.default_quality
    for q in range(pv.levels):
        candidate = [q if first is None else first] + [q] * (pv.chunk_count - 1)
        total = sum(replay_plan(candidate, pt, pv, start_index, config).qoe[1:])
        if total > best:
            best, plan = total, candidate
    return float(best), plan


def _backtrack(history: list[tuple[np.ndarray, np.ndarray]], index: int) -> list[int]:
    plan = []
    for parents, qualities in reversed(history):
        plan.append(int(qualities[index]))
        index = int(parents[index])
    return plan[::-1]


class PlanPolicy(AbrPolicy):
    """Plays a fixed quality sequence (the optimum's plan) in the simulator."""

    name = "optimal"

    def __init__(self, plan: list[int]) -> None:
        self.plan = list(plan)

    def select_quality(self, obs: AbrObservation) -> int:
        return self.plan[obs.chunk_index]


def replay_plan(plan: list[int], trace: BandwidthTrace | PreparedTrace, video: Video | PreparedVideo,
                start_index: int = 1, config: SimConfig = SimConfig(),
                log_rows: bool = False) -> SessionResult:
    """The plan played in the real simulator (cap and sleeps included)."""
    return simulate_session(PlanPolicy(plan), trace, video, start_index, config, log_rows=log_rows,
                            policy_name="optimal")
