"""MPC variants: hand-computed cases, the vectorised search against a plain-Python loop, the robust error
memory, and the plus/minus-one restriction."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.policies.mpc import (
    FastMPC,
    RobustMPC,
    RobustMPCPlusMinusOne,
    all_plans,
    bounded_step_plans,
    rebuffer_gathered,
    rebuffer_prefix_tree,
)
from netllm.abr_state import AbrObservation
from netllm.qoe import REBUFFER_PENALTY

LADDER = [300.0, 750.0, 1200.0, 1850.0, 2850.0, 4300.0]


def obs_with(history: list[float], buffer_s: float, last_quality: int, sizes: list[list[int]],
             ladder: list[float], chunk_index: int, total_chunks: int,
             chunk_s: float = 4.0) -> AbrObservation:
    return AbrObservation(chunk_index=chunk_index, total_chunks=total_chunks, last_quality=last_quality,
                          buffer_s=buffer_s, throughput_kbps_history=history,
                          download_time_s_history=[1.0] * len(history), upcoming_chunk_sizes_bytes=sizes,
                          ladder_kbps=ladder, chunk_duration_s=chunk_s)


# -- a plain-Python MPC, written the way Pensieve's mpc.py loops ---------------------------------------------

def reference_rewards(obs: AbrObservation, bandwidth_kbps: float, horizon_cap: int = 5,
                      max_step: int | None = None) -> dict[tuple[int, ...], float]:
    horizon = min(horizon_cap, obs.chunks_remaining, len(obs.upcoming_chunk_sizes_bytes))
    ladder = obs.ladder_kbps
    rewards = {}
    for plan in itertools.product(range(len(ladder)), repeat=horizon):
        steps = zip((obs.last_quality,) + plan, plan)
        if max_step is not None and any(abs(b - a) > max_step for a, b in steps):
            continue
        buffer_s, rebuffer_s, bitrate_sum, switch_sum, last = obs.buffer_s, 0.0, 0.0, 0.0, obs.last_quality
        for k, q in enumerate(plan):
            download_s = obs.upcoming_chunk_sizes_bytes[k][q] * (8.0 / 1000.0 / bandwidth_kbps)
            if buffer_s < download_s:
                rebuffer_s += download_s - buffer_s
                buffer_s = 0.0
            else:
                buffer_s -= download_s
            buffer_s += obs.chunk_duration_s
            bitrate_sum += ladder[q]
            switch_sum += abs(ladder[q] - ladder[last])
            last = q
        rewards[plan] = bitrate_sum / 1000.0 - REBUFFER_PENALTY * rebuffer_s - switch_sum / 1000.0
    return rewards


def reference_choice(rewards: dict[tuple[int, ...], float]) -> int:
    best, best_plan = -math.inf, None
    for plan, reward in rewards.items():  # insertion order = lexicographic order
        if reward >= best:  # Pensieve keeps the last of equal rewards
            best, best_plan = reward, plan
    assert best_plan is not None
    return best_plan[0]


class PensievePredictor:
    """Pensieve's robust bandwidth predictor, list-based as in test/mpc.py (per session)."""

    def __init__(self) -> None:
        self.past_errors: list[float] = []
        self.past_estimates: list[float] = []

    def predict(self, history: list[float]) -> float:
        error = 0.0
        if self.past_estimates:
            error = abs(self.past_estimates[-1] - history[-1]) / history[-1]
        self.past_errors.append(error)
        window = history[-5:]
        harmonic = 1.0 / (sum(1.0 / x for x in window) / len(window))
        max_error = max(self.past_errors[-5:])
        self.past_estimates.append(harmonic)
        return harmonic / (1.0 + max_error)


# -- hand-computed cases -------------------------------------------------------------------------------------
# Two rungs (1000, 2000 kbps), 4 s chunks, 2 chunks left, sizes 500 kB (4 Mbit) and 1 MB (8 Mbit) per chunk,
# one measured throughput of 2000 kbps: first decision, error 0 -> predicted 2000 kbps.
# Download times: rung 0: 4000 kbit / 2000 = 2 s; rung 1: 8000 kbit / 2000 = 4 s. last quality 0.
TWO_RUNGS = [1000.0, 2000.0]
TWO_SIZES = [[500_000, 1_000_000], [500_000, 1_000_000]]


def test_hand_case_low_buffer_picks_low() -> None:
    # buffer 2 s:
    #  (0,0): dt 2 <= 2 -> no stall, buffer 0+4; dt 2 -> no stall.  QoE 1 + 1 - 0 - 0             =  2.0
    #  (0,1): as above, then dt 4 <= 4 -> no stall.                 QoE 1 + 2 - 0 - |2-1|         =  2.0
    #  (1,0): dt 4 > 2 -> stall 2 s, buffer 0+4; dt 2 fine.         QoE 2 + 1 - 4.3*2 - (1 + 1)   = -7.6
    #  (1,1): stall 2 s; then dt 4 <= 4.                            QoE 2 + 2 - 8.6 - 1           = -5.6
    # tie of (0,0) and (0,1): the later one, (0,1), wins; its first action is 0.
    obs = obs_with([2000.0], 2.0, 0, TWO_SIZES, TWO_RUNGS, chunk_index=46, total_chunks=48)
    policy = RobustMPC()
    assert policy.select_quality(obs) == 0
    assert policy.last_prediction_kbps == pytest.approx(2000.0)
    plans, rewards = policy.plan_rewards(obs, 2000.0)
    got = {tuple(p): r for p, r in zip(plans.tolist(), rewards)}
    assert got == pytest.approx({(0, 0): 2.0, (0, 1): 2.0, (1, 0): -7.6, (1, 1): -5.6})


def test_hand_case_enough_buffer_picks_high() -> None:
    # buffer 4 s:
    #  (0,0): 2.0;  (0,1): buffer 4-2+4 = 6 >= 4 -> 2.0
    #  (1,0): dt 4 <= 4 -> no stall, buffer 4; QoE 2 + 1 - (1 + 1) = 1.0
    #  (1,1): no stall; QoE 2 + 2 - 1 = 3.0  -> best, first action 1
    obs = obs_with([2000.0], 4.0, 0, TWO_SIZES, TWO_RUNGS, chunk_index=46, total_chunks=48)
    assert RobustMPC().select_quality(obs) == 1
    assert FastMPC().select_quality(obs) == 1


def test_tie_goes_to_the_later_plan() -> None:
    # Last chunk (horizon 1), last quality 0, buffer 10 s, no stall either way:
    #  (0): 1.0 - 0 = 1.0;  (1): 2.0 - |2 - 1| = 1.0  -> exact tie; Pensieve's `>=` keeps the later plan, (1).
    obs = obs_with([2000.0], 10.0, 0, TWO_SIZES[:1], TWO_RUNGS, chunk_index=47, total_chunks=48)
    for policy in (RobustMPC(), FastMPC(), RobustMPCPlusMinusOne()):
        assert policy.select_quality(obs) == 1


def test_first_chunk_returns_last_quality() -> None:
    obs = obs_with([], 0.0, 1, [[100] * 6], LADDER, chunk_index=0, total_chunks=48)
    for policy in (RobustMPC(), FastMPC(), RobustMPCPlusMinusOne()):
        assert policy.select_quality(obs) == 1


def test_robust_discount_and_reset() -> None:
    sizes = [[500_000, 1_000_000]]
    robust, fast = RobustMPC(), FastMPC()
    first = obs_with([2000.0], 4.0, 0, sizes, TWO_RUNGS, chunk_index=1, total_chunks=48)
    robust.select_quality(first)
    fast.select_quality(first)
    assert robust.last_prediction_kbps == pytest.approx(2000.0)  # first decision: error 0
    # Next chunk measured 1000 kbps. Error = |2000 - 1000| / 1000 = 1.0.
    # Harmonic mean of [2000, 1000] = 2 / (1/2000 + 1/1000) = 1333.33; robust: 1333.33 / (1 + 1) = 666.67.
    second = obs_with([2000.0, 1000.0], 4.0, 0, sizes, TWO_RUNGS, chunk_index=2, total_chunks=48)
    robust.select_quality(second)
    fast.select_quality(second)
    assert fast.last_prediction_kbps == pytest.approx(4000.0 / 3.0)
    assert robust.last_prediction_kbps == pytest.approx(2000.0 / 3.0)
    # A retried request for the same chunk must not record the error twice.
    robust.select_quality(second)
    assert robust.last_prediction_kbps == pytest.approx(2000.0 / 3.0)
    assert list(robust._errors) == pytest.approx([0.0, 1.0])
    # reset() forgets the errors: the same observation is then a first decision again (error 0).
    robust.reset()
    robust.select_quality(second)
    assert robust.last_prediction_kbps == pytest.approx(4000.0 / 3.0)


def test_error_window_is_five_decisions() -> None:
    policy = RobustMPC()
    history = [1000.0]
    sizes = [[100_000] * 6]
    # decision 1: error 0. decision 2: throughput 4000 vs estimate 1000 -> error 0.75, then steady 4000s.
    for tput in [None, 4000.0, 4000.0, 4000.0, 4000.0, 4000.0, 4000.0]:
        if tput is not None:
            history.append(tput)
        policy.select_quality(obs_with(list(history), 10.0, 2, sizes, LADDER, len(history), 48))
    # the 0.75 error was recorded at decision 2 and has left the 5-decision window after decision 7
    assert max(policy._errors) < 0.75
    assert len(policy._errors) == 5


def test_horizon_shrinks_at_the_end_and_with_fewer_rows() -> None:
    policy = FastMPC()
    sizes = [[100_000 * (q + 1) for q in range(6)] for _ in range(5)]
    near_end = obs_with([3000.0], 10.0, 2, sizes[:2], LADDER, chunk_index=46, total_chunks=48)
    plans, _ = policy.plan_rewards(near_end, 3000.0)
    assert plans.shape == (36, 2)  # 2 chunks left
    few_rows = obs_with([3000.0], 10.0, 2, sizes[:3], LADDER, chunk_index=10, total_chunks=48)
    plans, _ = policy.plan_rewards(few_rows, 3000.0)
    assert plans.shape == (216, 3)  # only 3 rows given
    full = obs_with([3000.0], 10.0, 2, sizes, LADDER, chunk_index=10, total_chunks=48)
    plans, _ = policy.plan_rewards(full, 3000.0)
    assert plans.shape == (7776, 5)


def test_plan_tables() -> None:
    assert all_plans(3, 2).tolist() == [list(p) for p in itertools.product(range(3), repeat=2)]
    # from level 0 with 3 levels and 2 steps: 0->{0,1}, 1->{0,1,2}
    assert bounded_step_plans(3, 2, 0).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [1, 2]]
    # Genet's count: from a middle level of six, 3^5 minus the plans that leave the ladder
    genet = [p for p in itertools.product(range(6), repeat=5)
             if all(abs(b - a) <= 1 for a, b in zip((2,) + p, p))]
    assert bounded_step_plans(6, 5, 2).tolist() == [list(p) for p in genet]


# -- vectorised == reference on generated states -------------------------------------------------------------

@st.composite
def mpc_states(draw: st.DrawFn) -> tuple[AbrObservation, float]:
    levels = draw(st.integers(2, 6))
    ladder = sorted(draw(st.sets(st.integers(100, 8000), min_size=levels, max_size=levels)))
    remaining = draw(st.integers(1, 7))
    rows = draw(st.integers(1, min(5, remaining)))
    chunk_s = draw(st.sampled_from([1.0, 2.0, 4.0]))
    sizes = [[int(b * 125 * chunk_s * draw(st.floats(0.5, 1.5))) + 1 for b in ladder] for _ in range(rows)]
    history = draw(st.lists(st.floats(50, 20_000), min_size=1, max_size=8))
    obs = obs_with(history, draw(st.floats(0, 40)), draw(st.integers(0, levels - 1)), sizes,
                   [float(b) for b in ladder], chunk_index=48 - remaining, total_chunks=48, chunk_s=chunk_s)
    return obs, draw(st.floats(50, 20_000))


def assert_same_choice(chosen: int, rewards: dict[tuple[int, ...], float]) -> None:
    best = max(rewards.values())
    best_of_chosen = max(r for p, r in rewards.items() if p[0] == chosen)
    # identical unless two plans tie to within rounding, where either first action is correct
    assert best_of_chosen == pytest.approx(best, abs=1e-9)
    second = max((r for p, r in rewards.items() if p[0] != reference_choice(rewards)), default=-math.inf)
    if best - second > 1e-9:
        assert chosen == reference_choice(rewards)


@given(mpc_states())
def test_full_search_matches_reference(state: tuple[AbrObservation, float]) -> None:
    obs, bandwidth = state
    plans, rewards = FastMPC().plan_rewards(obs, bandwidth)
    reference = reference_rewards(obs, bandwidth)
    assert [tuple(p) for p in plans.tolist()] == list(reference)
    np.testing.assert_allclose(rewards, list(reference.values()), rtol=1e-12, atol=1e-9)


@given(mpc_states())
def test_pm1_search_matches_reference(state: tuple[AbrObservation, float]) -> None:
    obs, bandwidth = state
    plans, rewards = RobustMPCPlusMinusOne().plan_rewards(obs, bandwidth)
    reference = reference_rewards(obs, bandwidth, max_step=1)
    assert [tuple(p) for p in plans.tolist()] == list(reference)
    np.testing.assert_allclose(rewards, list(reference.values()), rtol=1e-12, atol=1e-9)


@given(st.lists(mpc_states(), min_size=1, max_size=6))
def test_robust_session_matches_pensieve_loop(states: list[tuple[AbrObservation, float]]) -> None:
    """A whole session: the robust predictor and the choice equal the list-based reference at every chunk."""
    robust, pm1 = RobustMPC(), RobustMPCPlusMinusOne()
    predictor_full, predictor_pm1 = PensievePredictor(), PensievePredictor()
    history: list[float] = []
    for index, (obs, _) in enumerate(states):
        history.append(obs.throughput_kbps_history[-1])
        obs.throughput_kbps_history = list(history)
        obs.download_time_s_history = [1.0] * len(history)
        obs.chunk_index = min(index + 1, obs.total_chunks - 1)
        predicted = predictor_full.predict(history)
        assert predictor_pm1.predict(history) == predicted
        chosen = robust.select_quality(obs)
        assert robust.last_prediction_kbps == pytest.approx(predicted, rel=1e-12)
        assert_same_choice(chosen, reference_rewards(obs, robust.last_prediction_kbps))
        chosen_pm1 = pm1.select_quality(obs)
        assert abs(chosen_pm1 - obs.last_quality) <= 1
        assert_same_choice(chosen_pm1, reference_rewards(obs, pm1.last_prediction_kbps, max_step=1))


@given(st.lists(st.floats(0.0, 30.0), min_size=6, max_size=6), st.floats(0, 30), st.floats(0.5, 8))
def test_prefix_tree_equals_gathered(times: list[float], buffer_s: float, chunk_s: float) -> None:
    download_s = np.array(times).reshape(2, 3)
    tree = rebuffer_prefix_tree(download_s, buffer_s, chunk_s)
    gathered = rebuffer_gathered(download_s, all_plans(3, 2), buffer_s, chunk_s)
    np.testing.assert_array_equal(tree, gathered)


def test_pm1_never_moves_more_than_one_level() -> None:
    rng = np.random.default_rng(7)
    policy = RobustMPCPlusMinusOne()
    last = 0
    history: list[float] = []
    for chunk in range(1, 48):
        history.append(float(rng.uniform(100, 10_000)))
        sizes = [[int(b * 500 * rng.uniform(0.8, 1.2)) for b in LADDER] for _ in range(min(5, 48 - chunk))]
        obs = obs_with(list(history), float(rng.uniform(0, 30)), last, sizes, LADDER, chunk, 48)
        quality = policy.select_quality(obs)
        assert abs(quality - last) <= 1
        last = quality


def test_pm1_climbs_one_level_at_a_time_on_a_fast_link() -> None:
    policy, unrestricted = RobustMPCPlusMinusOne(), RobustMPC()
    sizes = [[int(b * 500) for b in LADDER]] * 5
    obs = obs_with([50_000.0], 30.0, 0, sizes, LADDER, 1, 48)
    assert unrestricted.select_quality(obs) == 5  # plenty of bandwidth and buffer: straight to the top
    assert policy.select_quality(obs) == 1
