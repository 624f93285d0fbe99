"""BBA, rate-based and BOLA decisions pinned on hand-computed cases."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.policies import available_policies, make_policy
from controller.policies.bba import BBA
from controller.policies.bola import Bola
from controller.policies.rate_based import RateBased, harmonic_mean_kbps, highest_sustainable
from netllm.abr_state import AbrObservation

LADDER = [300.0, 750.0, 1200.0, 1850.0, 2850.0, 4300.0]


def observation(buffer_s: float = 10.0, history: list[float] | None = None, last_quality: int = 1,
                ladder: list[float] = LADDER, chunk_s: float = 4.0) -> AbrObservation:
    history = [] if history is None else history
    sizes = [[int(b * 1000 / 8 * chunk_s) for b in ladder]]
    return AbrObservation(chunk_index=len(history), total_chunks=48, last_quality=last_quality,
                          buffer_s=buffer_s, throughput_kbps_history=history,
                          download_time_s_history=[1.0] * len(history), upcoming_chunk_sizes_bytes=sizes,
                          ladder_kbps=ladder, chunk_duration_s=chunk_s)


def test_registry_builds_every_classic_policy() -> None:
    for name in ("bba", "rb", "bola", "robustmpc", "fastmpc", "robustmpc-pm1"):
        assert name in available_policies()
        assert make_policy(name).name == name


# BBA: reservoir 5 s, cushion 10 s, six levels -> index = floor(5 * (buffer - 5) / 10) inside the cushion.
@pytest.mark.parametrize("buffer_s, expected", [
    (0.0, 0),    # below the reservoir
    (3.0, 0),    # below the reservoir
    (4.999, 0),  # below the reservoir
    (5.0, 0),    # 5 * 0 / 10 = 0
    (6.9, 0),    # 5 * 1.9 / 10 = 0.95 -> 0
    (7.0, 1),    # 5 * 2 / 10 = 1
    (10.0, 2),   # 5 * 5 / 10 = 2.5 -> 2 (floor, as Pensieve's int())
    (12.0, 3),   # 5 * 7 / 10 = 3.5 -> 3
    (14.99, 4),  # 5 * 9.99 / 10 = 4.995 -> 4
    (15.0, 5),   # >= reservoir + cushion
    (20.0, 5),   # >= reservoir + cushion
    (60.0, 5),
])
def test_bba_index_mapping(buffer_s: float, expected: int) -> None:
    assert BBA().select_quality(observation(buffer_s)) == expected


@pytest.mark.parametrize("buffer_s, expected", [
    (3.0, 0),    # below the reservoir
    (10.0, 3),   # rate = 300 + (4300 - 300) * (10 - 5) / 10 = 2300 kbps; top rung <= 2300: 1850 (index 3)
    (12.0, 4),   # rate = 300 + 4000 * 0.7 = 3100 kbps -> 2850 (index 4)
    (15.0, 5),   # >= reservoir + cushion
])
def test_bba_rate_mapping(buffer_s: float, expected: int) -> None:
    assert BBA(mapping="rate").select_quality(observation(buffer_s)) == expected


def test_bba_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        BBA(cushion_s=0)
    with pytest.raises(ValueError):
        BBA(mapping="log")


@given(st.floats(0, 100), st.floats(0, 100))
def test_bba_is_monotone_in_buffer(a: float, b: float) -> None:
    low, high = sorted((a, b))
    policy = BBA()
    assert policy.select_quality(observation(low)) <= policy.select_quality(observation(high))


def test_harmonic_mean() -> None:
    # 2 / (1/1000 + 1/2000) = 2 / 0.0015 = 1333.33...
    assert harmonic_mean_kbps([1000.0, 2000.0]) == pytest.approx(4000.0 / 3.0)
    # only the last 5 count: [10, 1000 x 5] -> 1000
    assert harmonic_mean_kbps([10.0] + [1000.0] * 5) == pytest.approx(1000.0)
    assert harmonic_mean_kbps([]) is None
    assert harmonic_mean_kbps([0.0, 500.0]) == pytest.approx(500.0)  # zeros skipped, as Pensieve's padding


@pytest.mark.parametrize("history, expected", [
    ([1000.0, 2000.0], 2),            # 1333.3 kbps -> 1200 (index 2)
    ([5000.0] * 5, 5),                # 5000 -> 4300
    ([4300.0], 5),                    # equal to the top rung counts as sustainable
    ([299.0, 5000.0], 0),             # 2/(1/299+1/5000) = 564.3 -> 300 (index 0)
    ([100.0], 0),                     # below the lowest rung -> lowest
    ([10.0, 3000, 3000, 3000, 3000, 3000], 4),  # window drops the 10: 3000 -> 2850
    # 1/800 + 1/1600 + 1/3200 = 0.0021875; 3 / 0.0021875 = 1371.43 -> 1200 (index 2)
    ([800.0, 1600.0, 3200.0], 2),
])
def test_rate_based(history: list[float], expected: int) -> None:
    assert RateBased().select_quality(observation(history=history)) == expected


def test_rate_based_first_chunk_keeps_last_quality() -> None:
    assert RateBased().select_quality(observation(history=[], last_quality=3)) == 3


def test_highest_sustainable_edges() -> None:
    assert highest_sustainable(LADDER, 0.0) == 0
    assert highest_sustainable(LADDER, 1e9) == 5
    assert highest_sustainable(LADDER, 1849.999) == 2


# BOLA with the Pensieve ladder, 4 s chunks, target 60 s, gp 5:
#   u = ln(b / 300) = [0, 0.91629, 1.38629, 1.81916, 2.25129, 2.66259]
#   V = (60 - 4) / (2.66259 + 5) = 7.30824;  V (u + gp) = [36.541, 43.238, 46.673, 49.836, 52.994, 56.000]
#   score_m(B) = (V (u_m + gp) - B) / b_m
#   B = 40: [-0.01153, 0.00432, 0.00556, 0.00532, 0.00456, 0.00372] -> 2
#   B = 45: [-0.02820, -0.00235, 0.00139, 0.00261, 0.00280, 0.00256] -> 4
#   B = 50: [-0.04486, -0.00902, -0.00277, -0.00009, 0.00105, 0.00140] -> 5
#   low buffers: score_0 = (36.541 - B) / 300 beats score_1 = (43.237 - B) / 750 while B < 32.08
@pytest.mark.parametrize("buffer_s, expected", [(0.0, 0), (20.0, 0), (32.0, 0), (32.2, 1), (40.0, 2),
                                                (45.0, 4), (50.0, 5), (60.0, 5)])
def test_bola_pinned(buffer_s: float, expected: int) -> None:
    assert Bola().select_quality(observation(buffer_s)) == expected


def test_bola_parameter_v() -> None:
    policy = Bola()
    policy.select_quality(observation(0.0))
    assert policy.v == pytest.approx(56.0 / (math.log(4300 / 300) + 5.0))
    assert policy.v == pytest.approx(7.30824, abs=1e-5)


@given(st.floats(0, 100), st.floats(0, 100))
def test_bola_is_monotone_in_buffer(a: float, b: float) -> None:
    low, high = sorted((a, b))
    policy = Bola()
    assert policy.select_quality(observation(low)) <= policy.select_quality(observation(high))


def test_bola_follows_ladder_changes() -> None:
    policy = Bola()
    assert policy.select_quality(observation(50.0)) == 5
    two_rungs = [500.0, 1000.0]
    # V = 56 / (ln 2 + 5) = 9.8357; at B = 50: scores (49.18 - 50)/500 < (56 - 50)/1000 -> 1
    assert policy.select_quality(observation(50.0, ladder=two_rungs)) == 1
    assert policy.select_quality(observation(0.0, ladder=two_rungs)) == 0
