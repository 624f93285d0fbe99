"""Live timing in the chunk-level simulator (`SimConfig.live`): the default stays Pensieve's exactly, and
each live-timing term moves request times, trace position and buffer by hand-computable amounts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from controller.policies import make_policy
from controller.policies.base import AbrPolicy
from emulation.abr_sim import (LIVE_FALLBACK_INIT_BYTES, LIVE_FALLBACK_STARTUP_BYTES, AbrSession, LiveTiming,
                               SimConfig, measured_live_timing, simulate_session)
from emulation.abr_sim_cli import Config as SimCliConfig
from emulation.abr_sim_cli import run as sim_cli_run
from netllm.abr_state import AbrObservation
from netllm.cli import CommandError
from netllm.video import Video
from traces.bandwidth import BandwidthTrace
from traces.generators import markov
from traces.readers import write_cooked

LADDER = (300.0, 750.0, 1200.0, 1850.0, 2850.0, 4300.0)
MB_PER_S_KBPS = 8000.0
"""8000 kbps = 1,000,000 bytes/s (payload fraction 1 in these tests)."""


def synthetic_video() -> Video:
    sizes = np.array([[int(k * 500 * (1.0 + 0.2 * math.sin(c * 1.7 + lvl))) for c in range(48)]
                      for lvl, k in enumerate(LADDER)], dtype=np.int64)
    return Video(LADDER, sizes, 4.0, "synthetic")


def flat_video(chunks: int, size_bytes: int) -> Video:
    return Video(LADDER, np.full((len(LADDER), chunks), size_bytes, dtype=np.int64), 4.0, "flat")


def trace_of(times: list[float], kbps: list[float]) -> BandwidthTrace:
    return BandwidthTrace("t", np.asarray(times, float), np.asarray(kbps, float))


def constant_trace(kbps: float = MB_PER_S_KBPS, seconds: int = 400) -> BandwidthTrace:
    return trace_of([float(t) for t in range(seconds + 1)], [kbps] * (seconds + 1))


class Fixed(AbrPolicy):
    name = "fixed"

    def __init__(self, qualities: list[int]) -> None:
        self.qualities = qualities

    def select_quality(self, obs: AbrObservation) -> int:
        return self.qualities[obs.chunk_index]


def cfg(live: LiveTiming | None, **kw) -> SimConfig:
    return SimConfig(rtt_s=0.08, payload_fraction=1.0, default_quality=None, live=live, **kw)


# ------------------------------------------------------------------ default mode unchanged

# Captured from the simulator before live timing existed (same inputs: synthetic_video, markov(7), start 3,
# seed 5): Pensieve's dynamics must not move by a single bit.
BEFORE = {  # (policy, noise): qualities (one digit a chunk), mean QoE, duration, startup, sum of requests
    ("bba", False): ("101345545555554453444444444553444444555555555555",
        2.970212765957446, 167.14086795619548, 0.6912151599023061, 3792.9354678682926),
    ("bba", True): ("101345545555554454344444444553444444555555555555",
        2.970212765957446, 167.45298088936246, 0.7082054628393961, 3801.805653778211),
    ("robustmpc", False): ("155544444455555544444444444444444444455555555555",
        3.2680851063829772, 167.760589368986, 0.6912151599023061, 3947.0816342577155),
    ("robustmpc", True): ("155544444455555444444444444455544444455555555555",
        3.198176877702364, 171.19428752560012, 0.7082054628393961, 3981.591896191755),
}


@pytest.mark.parametrize("policy,noise", sorted(BEFORE))
def test_default_mode_is_bit_identical_to_before_live_timing(policy, noise):
    r = simulate_session(make_policy(policy), markov(7, duration_s=300.0), synthetic_video(), start_index=3,
                         config=SimConfig(noise=noise), seed=5, log_rows=True)
    qualities, mean_qoe, duration_s, startup_s, request_sum = BEFORE[(policy, noise)]
    assert r.qualities == [int(c) for c in qualities]
    assert r.mean_qoe == mean_qoe and r.duration_s == duration_s and r.startup_delay_s == startup_s
    assert sum(row["request_time_s"] for row in r.rows) == request_sum


def test_abr_session_default_mode_is_bit_identical_to_before():
    s = AbrSession(markov(7, duration_s=300.0), synthetic_video(), SimConfig(), start_index=3)
    steps = [s.step(2) for _ in range(47)]
    assert s.done
    assert sum(x.qoe for x in steps) == 55.950000000000045 and s.player.clock_s == 133.0475324437187


def test_all_zero_live_timing_equals_pensieve():
    video, trace = synthetic_video(), markov(3, duration_s=300.0)
    a = simulate_session(make_policy("robustmpc"), trace, video, config=SimConfig(), log_rows=True)
    b = simulate_session(make_policy("robustmpc"), trace, video, config=SimConfig(live=LiveTiming()),
                         log_rows=True)
    assert a.qualities == b.qualities and a.qoe == b.qoe and a.duration_s == b.duration_s
    assert [r["request_time_s"] for r in a.rows] == [r["request_time_s"] for r in b.rows]


# ------------------------------------------------------------------ hand-computed shifts on a constant trace

def test_request_times_shift_by_startup_gap_init_and_overhead_on_constant_trace():
    live = LiveTiming(startup_bytes=50_000, startup_requests=2, startup_idle_s=0.1, request_gap_s=0.03,
                      init_bytes=(1000,) * 6, request_overhead_s=0.005, rtt_consumes_trace=True)
    video = flat_video(4, 100_000)  # 0.1 s per chunk at 1 MB/s
    r = simulate_session(Fixed([0, 0, 1, 1]), constant_trace(), video, config=cfg(live), log_rows=True)
    first_byte = 0.085  # RTT + overhead
    chunk0 = 0.1 + 2 * first_byte + first_byte + (50_000 + 1000) / 1e6  # idle, 2 start-up requests, init
    req = [row["request_time_s"] for row in r.rows]
    assert req[0] == pytest.approx(chunk0, abs=1e-9)
    delay = first_byte + 0.1
    assert r.download_times_s == pytest.approx([delay] * 4, abs=1e-9)
    assert req[1] == pytest.approx(req[0] + delay + 0.03, abs=1e-9)  # same quality: gap only
    assert req[2] == pytest.approx(req[1] + delay + 0.03 + first_byte + 1000 / 1e6, abs=1e-9)  # switch: init
    assert req[3] == pytest.approx(req[2] + delay + 0.03, abs=1e-9)
    assert r.rows[0]["first_byte_time_s"] == pytest.approx(req[0] + first_byte, abs=1e-9)
    # The wait before chunk 0 is start-up delay; later waits drain the buffer.
    assert r.startup_delay_s == pytest.approx(chunk0 + delay, abs=1e-9)
    assert r.buffers_s[1] == pytest.approx(2 * 4.0 - 0.03 - delay, abs=1e-9)
    assert r.duration_s == pytest.approx(req[3] + delay, abs=1e-9)


def test_pensieve_requests_back_to_back_on_constant_trace():
    r = simulate_session(Fixed([0, 0, 1, 1]), constant_trace(), flat_video(4, 100_000), config=cfg(None),
                         log_rows=True)
    assert [row["request_time_s"] for row in r.rows] == pytest.approx([0.0, 0.18, 0.36, 0.54], abs=1e-9)


def test_rtt_flag_only_changes_trace_position_not_wall_time_on_constant_trace():
    base = dict(startup_requests=1, request_gap_s=0.05)
    video, trace = flat_video(3, 200_000), constant_trace()
    on_cfg = cfg(LiveTiming(**base, rtt_consumes_trace=True))
    on = simulate_session(Fixed([0] * 3), trace, video, config=on_cfg)
    off = simulate_session(Fixed([0] * 3), trace, video, config=cfg(LiveTiming(**base)))
    assert on.download_times_s == pytest.approx(off.download_times_s, abs=1e-12)
    assert on.duration_s == pytest.approx(off.duration_s, abs=1e-12)
    assert on.duration_s == pytest.approx(0.08 + 3 * (0.08 + 0.2) + 2 * 0.05, abs=1e-9)


# ------------------------------------------------------------------ trace time consumed

FAST_THEN_SLOW = ([0.0, 1.0, 2.0, 100.0], [0.0, MB_PER_S_KBPS, 800.0, 800.0])
"""1 MB/s during (0, 1] s, then 100 kB/s."""


def test_startup_bytes_consume_trace_time():
    video = flat_video(1, 900_000)
    plain = simulate_session(Fixed([0]), trace_of(*FAST_THEN_SLOW), video, config=cfg(LiveTiming()))
    assert plain.download_times_s[0] == pytest.approx(0.08 + 0.9, abs=1e-9)
    live = LiveTiming(startup_bytes=300_000)
    r = simulate_session(Fixed([0]), trace_of(*FAST_THEN_SLOW), video, config=cfg(live))
    # 0.3 s of the fast second goes to the start-up; the chunk gets 0.7 s fast (700 kB), 200 kB at 100 kB/s.
    assert r.download_times_s[0] == pytest.approx(0.08 + 0.7 + 2.0, abs=1e-9)
    assert r.startup_delay_s == pytest.approx(0.3 + 0.08 + 2.7, abs=1e-9)


def test_rtt_consumes_trace_time_only_when_asked():
    video = flat_video(1, 950_000)
    pensieve = simulate_session(Fixed([0]), trace_of(*FAST_THEN_SLOW), video,
                                config=cfg(LiveTiming(rtt_consumes_trace=False)))
    assert pensieve.download_times_s[0] == pytest.approx(0.08 + 0.95, abs=1e-9)
    live = simulate_session(Fixed([0]), trace_of(*FAST_THEN_SLOW), video,
                            config=cfg(LiveTiming(rtt_consumes_trace=True)))
    # The RTT idles 0.08 s of the fast second: 920 kB fast, 30 kB at 100 kB/s (0.3 s).
    assert live.download_times_s[0] == pytest.approx(0.08 + 0.92 + 0.3, abs=1e-9)


def test_request_gap_consumes_trace_time_and_can_stall():
    # Chunk 0 (quality 0, 500 kB) ends at 0.58 s in the fast second; a 3 s gap pushes chunk 1 into the
    # slow part, and 4 s of buffer minus 3 s gap minus its download stalls.
    video = flat_video(2, 500_000)
    live = LiveTiming(request_gap_s=3.0, rtt_consumes_trace=True)
    r = simulate_session(Fixed([0, 0]), trace_of(*FAST_THEN_SLOW), video, config=cfg(live), log_rows=True)
    assert r.download_times_s[0] == pytest.approx(0.58, abs=1e-9)
    assert r.rows[1]["request_time_s"] == pytest.approx(0.58 + 3.0, abs=1e-9)
    assert r.download_times_s[1] == pytest.approx(0.08 + 5.0, abs=1e-9)
    assert r.rebuffers_s[1] == pytest.approx(3.0 + 5.08 - 4.0, abs=1e-9)
    assert r.rows[1]["buffer_before_s"] == pytest.approx(4.0, abs=1e-9)


def test_abr_session_follows_the_same_live_dynamics():
    live = measured_live_timing(None, levels=6)
    video, trace = synthetic_video(), markov(11, duration_s=300.0)
    config = SimConfig(live=live)
    qualities = [(3 * i) % 6 for i in range(48)]
    full = simulate_session(Fixed(qualities), trace, video, config=config)
    s = AbrSession(trace, video, config)
    steps = [s.step(q) for q in qualities[1:]]
    assert [s.first_step.qoe] + [x.qoe for x in steps] == full.qoe
    assert s.player.clock_s == full.duration_s


# ------------------------------------------------------------------ measured values and checks

def test_measured_live_timing_reads_the_prepared_video_folder(tmp_path):
    (tmp_path / "manifest.mpd").write_bytes(b"m" * 1234)
    for i, n in enumerate((800, 810, 820)):
        (tmp_path / f"init-{i}.mp4").write_bytes(b"i" * n)
    doc = {"mpd": "manifest.mpd", "init_segments": ["init-0.mp4", "init-1.mp4", "init-2.mp4"]}
    (tmp_path / "video.json").write_text(json.dumps(doc))
    live = measured_live_timing(tmp_path)
    assert live.startup_bytes == (tmp_path / "video.json").stat().st_size + 1234
    assert live.init_bytes == (800, 810, 820)
    assert live.rtt_consumes_trace and live.startup_requests == 2
    assert 0 < live.request_gap_s < 0.1 and 0 < live.startup_idle_s < 0.5


def test_measured_live_timing_falls_back_for_pensieve_folders(tmp_path):
    (tmp_path / "video_size_0").write_text("1\n")
    live = measured_live_timing(tmp_path, levels=4)
    assert live.startup_bytes == LIVE_FALLBACK_STARTUP_BYTES
    assert live.init_bytes == (LIVE_FALLBACK_INIT_BYTES,) * 4


def test_bad_live_timing_is_rejected():
    with pytest.raises(ValueError, match="request_gap_s"):
        LiveTiming(request_gap_s=-0.1)
    with pytest.raises(ValueError, match="init_bytes"):
        LiveTiming(init_bytes=(1, -2))
    with pytest.raises(ValueError, match="init_bytes for 2 levels"):
        simulate_session(Fixed([0]), constant_trace(), flat_video(1, 1000),
                         config=cfg(LiveTiming(init_bytes=(1, 2))))


# ------------------------------------------------------------------ spread of gaps and transfers

def test_gap_draws_follow_the_quantiles():
    import random
    live = LiveTiming(request_gap_quantiles_s=(0.01, 0.02, 0.05))
    rng = random.Random(3)
    draws = [live.draw_gap_s(rng) for _ in range(20000)]
    assert min(draws) >= 0.01 and max(draws) <= 0.05
    below_median = sum(1 for d in draws if d < 0.02) / len(draws)
    assert 0.48 < below_median < 0.52  # the middle quantile is the median
    assert abs(sum(draws) / len(draws) - 0.025) < 0.0005  # mean of a piecewise-uniform distribution
    assert LiveTiming(request_gap_s=0.03).draw_gap_s(rng) == 0.03


def test_spread_is_seeded_and_off_by_default():
    video, trace = synthetic_video(), markov(3, duration_s=300.0)
    base = measured_live_timing(None)
    spread = measured_live_timing(None, spread=True)
    assert not base.random and spread.random

    def run(live: LiveTiming, seed: int):
        return simulate_session(make_policy("robustmpc"), trace, video, config=cfg(live), seed=seed)

    assert run(base, 0).duration_s == run(base, 1).duration_s  # without spread the seed does nothing
    a, b, c = run(spread, 0), run(spread, 0), run(spread, 1)
    assert a.duration_s == b.duration_s and a.qualities == b.qualities
    assert a.duration_s != c.duration_s
    # The spread is small: a session's length moves by well under a second on a 3-minute session.
    assert abs(a.duration_s - run(base, 0).duration_s) < 1.0


def test_transfer_jitter_moves_download_times_by_its_sigma():
    video = flat_video(40, 500_000)
    live = LiveTiming(transfer_jitter=0.05)
    r = simulate_session(Fixed([0] * 40), constant_trace(), video, config=cfg(live), seed=2)
    transfer = [d - 0.08 for d in r.download_times_s]  # 0.5 s at 1 MB/s without jitter
    logs = [math.log(t / 0.5) for t in transfer]
    mean = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / len(logs))
    assert 0.03 < sd < 0.07 and abs(mean) < 0.03


def test_bad_spread_is_rejected():
    with pytest.raises(ValueError, match="request_gap_quantiles_s"):
        LiveTiming(request_gap_quantiles_s=(0.03, 0.02))
    with pytest.raises(ValueError, match="request_gap_quantiles_s"):
        LiveTiming(request_gap_quantiles_s=(0.03,))
    with pytest.raises(ValueError, match="transfer_jitter"):
        LiveTiming(transfer_jitter=-0.1)


# ------------------------------------------------------------------ netllm sim --live-timing

def _cli_inputs(tmp_path: Path) -> tuple[Path, Path]:
    traces = tmp_path / "traces"
    traces.mkdir()
    for seed in (1, 2):
        write_cooked(markov(seed, duration_s=300.0, name=f"m{seed}"), traces / f"m{seed}.txt")
    video_dir = tmp_path / "video"
    video_dir.mkdir()
    for level in range(6):
        sizes = synthetic_video().chunk_sizes_bytes[level]
        (video_dir / f"video_size_{level}").write_text("\n".join(str(int(x)) for x in sizes) + "\n")
    return traces, video_dir


def test_sim_command_live_timing_option(tmp_path):
    traces, video_dir = _cli_inputs(tmp_path)
    common = dict(traces=traces, video=video_dir, policies=["bba"], chunks=20, workers=1, chunk_log=False)
    assert sim_cli_run(SimCliConfig(out=tmp_path / "plain", **common)) == 0
    assert sim_cli_run(SimCliConfig(out=tmp_path / "live", live_timing=True, **common)) == 0
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())
    live = json.loads((tmp_path / "live" / "summary.json").read_text())
    assert plain["live_timing"] is None
    assert live["live_timing"]["rtt_consumes_trace"] is True
    assert live["bba"]["startup_delay_s"] > plain["bba"]["startup_delay_s"] + 0.3
    with pytest.raises(CommandError, match="live-timing"):
        sim_cli_run(SimCliConfig(out=tmp_path / "opt", live_timing=True,
                                 **{**common, "policies": ["optimal"]}))


def test_sim_command_live_spread_option(tmp_path):
    traces, video_dir = _cli_inputs(tmp_path)
    common = dict(traces=traces, video=video_dir, policies=["bba"], chunks=20, workers=1, chunk_log=False,
                  live_timing=True)
    outcomes = {}
    for name, extra in {"fixed": {}, "spread0": {"live_spread": True},
                        "spread1": {"live_spread": True, "seed": 1}}.items():
        assert sim_cli_run(SimCliConfig(out=tmp_path / name, **common, **extra)) == 0
        doc = json.loads((tmp_path / name / "summary.json").read_text())
        outcomes[name] = (doc["bba"]["startup_delay_s"], doc["bba"]["mean_qoe"], doc["bba"]["rebuffer_ratio"])
        if name != "fixed":
            assert doc["live_timing"]["transfer_jitter"] > 0 and doc["live_timing"]["request_gap_quantiles_s"]
    assert len(set(outcomes.values())) == 3  # the spread moves the results, and the seed picks the draws
    with pytest.raises(CommandError, match="live-spread needs --live-timing"):
        sim_cli_run(SimCliConfig(out=tmp_path / "bad", **{**common, "live_timing": False}, live_spread=True))
