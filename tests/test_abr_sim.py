"""Chunk-level simulator: hand-computed downloads, cap draining, looping, start index, noise, observation,
logs, and agreement with an independently written reference and with NetLLM's published BBA figure."""

from __future__ import annotations

import bisect
import copy
import math
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.policies.base import AbrPolicy
from emulation.abr_sim import (AbrSession, PreparedTrace, PreparedVideo, SimConfig, simulate_session)
from netllm.abr_state import AbrObservation, parse_observation
from netllm.chunklog import COLUMNS, ChunkLogWriter, read_chunk_log, summarize
from netllm.qoe import chunk_qoe
from netllm.video import Video, load_video
from traces.bandwidth import BandwidthTrace, TraceError

RTT_S = 0.08
PAYLOAD = 0.95


def make_video(sizes: list[list[int]], ladder=(300.0, 750.0, 1200.0, 1850.0, 2850.0, 4300.0)) -> Video:
    """sizes[chunk][level] bytes."""
    return Video(tuple(ladder), np.asarray(sizes, dtype=np.int64).T.copy(), 4.0, "test")


def make_trace(times, kbps, name="t") -> BandwidthTrace:
    return BandwidthTrace(name, np.asarray(times, float), np.asarray(kbps, float))


class Fixed(AbrPolicy):
    """Plays a given quality sequence (index = chunk index) and records what it saw."""

    name = "fixed"

    def __init__(self, qualities: list[int]) -> None:
        self.qualities = qualities
        self.seen: list[dict] = []

    def select_quality(self, obs: AbrObservation) -> int:
        self.seen.append(copy.deepcopy(obs.to_json()))  # the simulator reuses the lists
        return self.qualities[obs.chunk_index]


def bytes_per_s(kbps: float) -> float:
    return kbps * 125.0 * PAYLOAD


# ------------------------------------------------------------------ hand-computed dynamics

def test_download_walks_trace_intervals_hand_computed():
    # Sample i's rate holds over (t[i-1], t[i]]: 800 kbps in (0,1], 1600 in (1,2], 800 in (2,3].
    trace = make_trace([0, 1, 2, 3], [999, 800, 1600, 800])
    size = int(bytes_per_s(800) * 1.0 + bytes_per_s(1600) * 0.5)  # all of (0,1] and half of (1,2]
    video = make_video([[size] * 6, [1000] * 6])
    r = simulate_session(Fixed([0, 0]), trace, video, start_index=1, config=SimConfig(default_quality=0))
    assert r.download_times_s[0] == pytest.approx(1.5 + RTT_S, abs=1e-9)
    assert r.startup_delay_s == pytest.approx(1.5 + RTT_S, abs=1e-9)
    assert r.rebuffers_s[0] == 0.0
    assert r.buffers_s[0] == pytest.approx(4.0, abs=1e-12)
    # chunk 1 starts at trace time 1.5, inside the 1600 kbps interval: 1000 bytes take 1000/rate s.
    assert r.download_times_s[1] == pytest.approx(1000 / bytes_per_s(1600) + RTT_S, abs=1e-9)
    assert r.buffers_s[1] == pytest.approx(4.0 - r.download_times_s[1] + 4.0, abs=1e-9)


def test_start_index_means_previous_sample_time_and_its_own_rate():
    trace = make_trace([0, 2, 4, 6], [0, 400, 1600, 400])
    size = int(bytes_per_s(1600) * 1.0)
    video = make_video([[size] * 6, [10] * 6])
    r = simulate_session(Fixed([0, 0]), trace, video, start_index=2, config=SimConfig(default_quality=0))
    assert r.download_times_s[0] == pytest.approx(1.0 + RTT_S, abs=1e-9)  # starts at t=2 with 1600 kbps


def test_trace_loops_back_to_sample_one():
    trace = make_trace([0, 1, 2], [0, 800, 400])
    # from start index 2: (1,2] at 400 kbps, then loop: (0,1] at 800, then (1,2] at 400 again.
    size = int(bytes_per_s(400) + bytes_per_s(800) + bytes_per_s(400) * 0.25)
    video = make_video([[size] * 6])
    r = simulate_session(Fixed([0]), trace, video, start_index=2, config=SimConfig(default_quality=0))
    assert r.download_times_s[0] == pytest.approx(2.25 + RTT_S, abs=1e-9)


def test_buffer_cap_sleeps_in_drain_steps_and_advances_the_trace():
    # Very fast link for 30 s then slow: buffer fills past a 10 s cap, sleeps advance trace time.
    trace = make_trace([0, 30, 1000], [0, 80000, 80])
    video = make_video([[10000] * 6] * 6)
    cfg = SimConfig(default_quality=0, buffer_cap_s=10.0)
    session = AbrSession(make_trace([0, 30, 1000], [0, 80000, 80]), video, cfg)
    steps = [session.first_step] + [session.step(0) for _ in range(5)]
    d = 10000 / bytes_per_s(80000) + RTT_S
    # chunk 0: buffer 4; chunk 1: 8 - d; chunk 2: 12 - 2d > 10 -> sleep ceil((2 - 2d)/0.5)*0.5 = 2.0 s
    assert steps[1].sleep_s == 0.0
    assert steps[2].sleep_s == pytest.approx(2.0)
    assert steps[2].buffer_s == pytest.approx(12 - 2 * d - 2.0, abs=1e-9)
    for s in steps[2:]:
        assert 9.5 < s.buffer_s <= 10.0 + 1e-9
    wall_s = sum(s.download_time_s + s.sleep_s for s in steps)
    assert session.player.clock_s == pytest.approx(wall_s, abs=1e-9)
    trace_elapsed = sum(s.download_time_s - RTT_S + s.sleep_s for s in steps)
    assert session.player.cursor.last_time_s == pytest.approx(trace_elapsed, abs=1e-9)


def test_sleep_crossing_into_slow_interval_slows_the_next_download():
    fast, slow = 80000, 800
    trace = make_trace([0, 3.0, 1000], [0, fast, slow])
    video = make_video([[10000] * 6] * 5)
    r = simulate_session(Fixed([0] * 5), trace, video, config=SimConfig(default_quality=0, buffer_cap_s=10.0))
    d = 10000 / bytes_per_s(fast)
    # Chunks 0-3 download in ~1 ms each at the fast rate; the sleeps after chunks 2 (2 s) and 3 (4 s) move
    # the trace position past 3 s, so chunk 4 downloads at the slow rate. Without sleeps it would be fast.
    assert r.download_times_s[3] == pytest.approx(d + RTT_S, abs=1e-9)
    assert r.download_times_s[4] == pytest.approx(10000 / bytes_per_s(slow) + RTT_S, abs=1e-9)


# ------------------------------------------------------------------ noise, determinism, errors

def test_deterministic_runs_repeat_and_noise_is_seeded_and_bounded():
    rng = np.random.default_rng(1)
    trace = make_trace(np.arange(0, 200, 1.0), rng.uniform(300, 5000, 200))
    video = make_video(rng.integers(50_000, 2_000_000, size=(20, 6)).tolist())
    qualities = rng.integers(0, 6, 20).tolist()
    base = simulate_session(Fixed(qualities), trace, video, config=SimConfig())
    again = simulate_session(Fixed(qualities), trace, video, config=SimConfig(), seed=99)
    assert base.qoe == again.qoe and base.download_times_s == again.download_times_s
    noisy = SimConfig(noise=True)
    a = simulate_session(Fixed(qualities), trace, video, config=noisy, seed=7)
    b = simulate_session(Fixed(qualities), trace, video, config=noisy, seed=7)
    c = simulate_session(Fixed(qualities), trace, video, config=noisy, seed=8)
    assert a.download_times_s == b.download_times_s
    assert a.download_times_s != c.download_times_s
    # the noise scales (transfer + RTT) but does not move the trace position: the ratio is in [0.9, 1.1]
    # for the first chunk, whose start position is the same either way.
    ratio = a.download_times_s[0] / base.download_times_s[0]
    assert 0.9 <= ratio <= 1.1 and ratio != 1.0


def test_zero_bandwidth_trace_and_bad_start_are_rejected():
    with pytest.raises(TraceError, match="carries no data"):
        PreparedTrace(make_trace([0, 1, 2], [5, 0, 0]))
    video = make_video([[100] * 6])
    with pytest.raises(ValueError, match="start index"):
        simulate_session(Fixed([0]), make_trace([0, 1, 2], [1, 1, 1]), video, start_index=3)
    with pytest.raises(ValueError, match="outside"):
        simulate_session(Fixed([0, 9]), make_trace([0, 1, 2], [1, 1000, 1000]), make_video([[100] * 6] * 2))


def test_zero_bandwidth_gap_is_waited_out():
    trace = make_trace([0, 1, 5, 6], [0, 800, 0, 800])
    size = int(bytes_per_s(800) * 1.5)
    r = simulate_session(Fixed([0]), trace, make_video([[size] * 6]), config=SimConfig(default_quality=0))
    assert r.download_times_s[0] == pytest.approx(5.5 + RTT_S, abs=1e-9)


def test_trace_with_too_little_data_per_pass_is_refused_up_front():
    # 1e-6 kbps over 1000 s carries 0.12 bytes a pass: a 100 kB chunk would loop ~10^6 times over it.
    video = make_video([[100_000] * 6])
    with pytest.raises(TraceError, match=r"would need .* passes \(at most 10000\)"):
        simulate_session(Fixed([0]), make_trace([0, 1000], [1e-6, 1e-6]), video)
    with pytest.raises(TraceError, match="passes"):
        AbrSession(make_trace([0, 1000], [1e-6, 1e-6]), video)
    # A trace of one millisecond that carries enough per pass plays (Mahimahi's one-line 12 Mbps link).
    one_ms = make_trace([0, 0.001], [12000, 12000])
    r = simulate_session(Fixed([0, 0]), one_ms, make_video([[10_000] * 6] * 2))
    assert r.download_times_s[0] == pytest.approx(10_000 / bytes_per_s(12000) + RTT_S, rel=1e-6)


def test_downloads_and_waits_stop_after_a_bounded_number_of_passes(monkeypatch):
    import emulation.abr_sim as abr_sim

    monkeypatch.setattr(abr_sim, "MAX_LOOPS_PER_CALL", 50)
    short = make_trace([0, 0.001], [12000, 12000])  # 1 ms a pass
    # a 100 kB chunk needs ~70 passes of 1425 bytes: under the up-front limit, over this run-time one
    with pytest.raises(TraceError, match="a download of 100000 bytes would pass over the trace more than 50"):
        simulate_session(Fixed([0]), short, make_video([[100_000] * 6]))
    # a 2 s buffer-cap sleep is 2000 passes
    cursor = abr_sim.TraceCursor(PreparedTrace(short), 1, PAYLOAD)
    with pytest.raises(TraceError, match="a wait of 2 s"):
        cursor.idle(2000.0)


def test_simulator_computes_qoe_with_the_shared_function(monkeypatch):
    import emulation.abr_sim as abr_sim

    calls = []

    def marked_qoe(bitrate_kbps, previous_kbps, rebuffer_s):
        calls.append((bitrate_kbps, previous_kbps, rebuffer_s))
        return chunk_qoe(bitrate_kbps, previous_kbps, rebuffer_s) + 1000.0

    monkeypatch.setattr(abr_sim, "chunk_qoe", marked_qoe)
    trace = make_trace(np.arange(0, 50, 1.0), [2000.0] * 50)
    video = make_video([[200_000] * 6] * 4)
    fast = simulate_session(Fixed([1, 3, 0, 5]), trace, video)
    session = AbrSession(trace, video)
    stepped_qoe = [session.first_step.qoe] + [session.step(q).qoe for q in (3, 0, 5)]
    assert len(calls) == 8 and all(q > 900 for q in fast.qoe) and stepped_qoe == fast.qoe


# ------------------------------------------------------------------ observation, QoE and logs

def test_observation_is_what_a_live_player_sends():
    rng = np.random.default_rng(2)
    trace = make_trace(np.arange(0, 300, 2.0), rng.uniform(200, 6000, 150))
    video = make_video(rng.integers(50_000, 2_000_000, size=(12, 6)).tolist())
    policy = Fixed(rng.integers(0, 6, 12).tolist())
    r = simulate_session(policy, trace, video, config=SimConfig(default_quality=1))
    assert [d["chunk_index"] for d in policy.seen] == list(range(1, 12))
    for k, doc in enumerate(policy.seen, start=1):
        obs = parse_observation(doc)  # the controller would accept it
        assert obs.last_quality == r.qualities[k - 1]
        assert obs.buffer_s == pytest.approx(r.buffers_s[k - 1])
        assert len(obs.upcoming_chunk_sizes_bytes) == min(5, 12 - k)
        assert obs.upcoming_chunk_sizes_bytes[0] == video.chunk_sizes_bytes[:, k].tolist()
        assert len(obs.throughput_kbps_history) == min(k, 8)
        assert obs.download_time_s_history[-1] == pytest.approx(r.download_times_s[k - 1])
        expected_tput = r.chunk_bytes[k - 1] * 8 / 1000 / r.download_times_s[k - 1]
        assert obs.throughput_kbps_history[-1] == pytest.approx(expected_tput)
        assert obs.rebuffer_s == pytest.approx(sum(r.rebuffers_s[:k]))
    assert r.qualities[0] == 1


def test_qoe_terms_and_log_rows_match_the_shared_definitions(tmp_path):
    rng = np.random.default_rng(3)
    trace = make_trace(np.arange(0, 100, 1.0), rng.uniform(100, 3000, 100))
    video = make_video(rng.integers(50_000, 2_000_000, size=(10, 6)).tolist())
    policy = Fixed(rng.integers(0, 6, 10).tolist())
    r = simulate_session(policy, trace, video, log_rows=True, policy_name="fixed")
    ladder = video.ladder_kbps
    prev = ladder[1]
    for k, q in enumerate(r.qualities):
        assert r.qoe[k] == chunk_qoe(ladder[q], prev, r.rebuffers_s[k])
        prev = ladder[q]
    assert any(s > 0 for s in r.rebuffers_s)  # this trace is slow enough to stall
    with ChunkLogWriter(tmp_path / "chunks.csv") as writer:
        for row in r.rows:
            assert tuple(row) == COLUMNS
            writer.write(row)
    rows = read_chunk_log(tmp_path / "chunks.csv")
    s = summarize(rows, "fixed", startup_delay_s=r.startup_delay_s)
    ref = r.summary()
    assert s.mean_qoe == pytest.approx(ref.mean_qoe) and s.switches == ref.switches
    assert s.total_rebuffer_s == pytest.approx(ref.total_rebuffer_s)
    first, second = r.rows[0], r.rows[1]
    assert first["request_time_s"] == 0.0 and first["finish_time_s"] == pytest.approx(r.startup_delay_s)
    assert second["request_time_s"] >= first["finish_time_s"]
    assert second["buffer_before_s"] == pytest.approx(r.buffers_s[0])


def test_step_api_matches_the_fast_loop():
    from controller.policies import make_policy

    rng = np.random.default_rng(4)
    trace = make_trace(np.arange(0, 400, 1.0), rng.uniform(300, 6000, 400))
    video = make_video(rng.integers(50_000, 2_000_000, size=(30, 6)).tolist())
    for cfg in (SimConfig(), SimConfig(noise=True, default_quality=0)):
        fast = simulate_session(make_policy("bba"), trace, video, start_index=17, config=cfg, seed=5)
        session = AbrSession(trace, video, cfg, start_index=17, seed=5)
        policy = make_policy("bba")
        policy.reset()
        steps = [session.first_step]
        while not session.done:
            steps.append(session.step(policy.select_quality(session.obs)))
        assert [s.quality for s in steps] == fast.qualities
        assert [s.qoe for s in steps] == fast.qoe
        assert [s.buffer_s for s in steps] == fast.buffers_s


# ------------------------------------------------------------------ independent reference

def reference_session(times, kbps, sizes, qualities, start, cap_s=60.0):
    """A differently written Pensieve-semantics simulator: cumulative-bytes integration in seconds."""
    n = len(times)
    seg = [(times[i] - times[i - 1], kbps[i] * 125.0 * PAYLOAD) for i in range(start, n)]
    loop = [(times[i] - times[i - 1], kbps[i] * 125.0 * PAYLOAD) for i in range(1, n)]
    while sum(d for d, _ in seg) < 2e4:
        seg += loop
    seg_start = [0.0]
    for d, _ in seg:
        seg_start.append(seg_start[-1] + d)
    offset = 0.0  # trace seconds since start
    buffer = 0.0
    out = []

    def advance(pos, nbytes):
        acc = 0.0
        j = max(bisect.bisect_right(seg_start, pos) - 1, 0)
        for (d, rate), t in zip(seg[j:], seg_start[j:]):
            begin = max(pos, t)
            avail = (t + d - begin) * rate
            if acc + avail > nbytes:
                return begin + (nbytes - acc) / rate
            acc += avail
        raise AssertionError("trace too short")

    for k, q in enumerate(qualities):
        finish = advance(offset, sizes[k][q])
        delay = finish - offset + RTT_S
        offset = finish
        stall = max(delay - buffer, 0.0)
        buffer = max(buffer - delay, 0.0) + 4.0
        sleep = math.ceil((buffer - cap_s) / 0.5) * 0.5 if buffer > cap_s else 0.0
        buffer -= sleep
        offset += sleep
        out.append((delay, stall if k else 0.0, buffer))
    return out


@given(seed=st.integers(0, 10**6), start=st.integers(1, 30), cap=st.sampled_from([8.0, 20.0, 60.0]))
def test_simulator_agrees_with_independent_reference(seed, start, cap):
    rng = random.Random(seed)
    n = 40
    times = [0.0]
    for _ in range(n - 1):
        times.append(times[-1] + rng.choice([0.5, 1.0, 2.0, 5.0]))
    kbps = [rng.choice([0.0, rng.uniform(50, 8000)]) if i else 0.0 for i in range(n)]
    kbps[-1] = max(kbps[-1], 100.0)
    sizes = [[rng.randint(10_000, 1_500_000) for _ in range(6)] for _ in range(15)]
    qualities = [rng.randrange(6) for _ in range(15)]
    r = simulate_session(Fixed(qualities), make_trace(times, kbps), make_video(sizes), start_index=start,
                         config=SimConfig(default_quality=qualities[0], buffer_cap_s=cap))
    ref = reference_session(times, kbps, sizes, qualities, start, cap)
    for k, (delay, stall, buffer) in enumerate(ref):
        assert r.download_times_s[k] == pytest.approx(delay, rel=1e-9, abs=1e-9)
        assert r.rebuffers_s[k] == pytest.approx(stall, rel=1e-9, abs=1e-9)
        assert r.buffers_s[k] == pytest.approx(buffer, rel=1e-9, abs=1e-7)


# ------------------------------------------------------------------ the published protocol

def _fcc_protocol(shared_data, policy: str, default_quality: int) -> float:
    from controller.policies import make_policy
    from emulation.abr_sim_cli import read_start_offsets
    from traces.readers import read_trace_dir

    abr = shared_data / "abr"
    offsets = read_start_offsets(abr / "fcc-test-start-offsets.txt")
    video = PreparedVideo(load_video(abr / "videos" / "video1_sizes"))
    cfg = SimConfig(default_quality=default_quality)
    p = make_policy(policy)
    results = [simulate_session(p, t, video, offsets[t.name], cfg).mean_qoe
               for t in read_trace_dir(abr / "traces" / "fcc-test")]
    assert len(results) == 100
    return sum(results) / len(results)


def test_fcc_test_protocol_reproduces_netllm_bba(shared_data):
    # NetLLM's runner (DEFAULT_QUALITY = 0) gives BBA 0.764 on fcc-test; the project default (quality 1)
    # must stay within 3% of it.
    assert _fcc_protocol(shared_data, "bba", 0) == pytest.approx(0.764, abs=0.0015)
    assert _fcc_protocol(shared_data, "bba", 1) == pytest.approx(0.764, rel=0.03)


def test_policy_decides_chunk_zero_without_a_default_quality():
    rng = np.random.default_rng(5)
    trace = make_trace(np.arange(0, 100, 1.0), rng.uniform(300, 3000, 100))
    video = make_video(rng.integers(50_000, 900_000, size=(6, 6)).tolist())
    policy = Fixed([4, 3, 2, 1, 0, 5])
    r = simulate_session(policy, trace, video, config=SimConfig(default_quality=None))
    assert r.qualities == [4, 3, 2, 1, 0, 5]
    first = policy.seen[0]
    assert first["chunk_index"] == 0 and first["buffer_s"] == 0.0 and first["throughput_kbps_history"] == []
    assert r.qoe[0] == chunk_qoe(video.ladder_kbps[4], video.ladder_kbps[4], 0.0)
    session = AbrSession(trace, video, SimConfig(default_quality=None))
    assert session.first_step is None and session.obs.chunk_index == 0
    assert [session.step(q).qoe for q in [4, 3, 2, 1, 0, 5]] == r.qoe
