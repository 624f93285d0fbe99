"""The offline optimum bounds every policy, equals brute force on small instances where it claims exactness,
and its plan replays to the achievable value it reports."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from controller.policies import make_policy
from controller.policies.base import AbrPolicy
from emulation.abr_optimal import PlanPolicy, replay_plan, solve
from emulation.abr_sim import PreparedTrace, PreparedVideo, SimConfig, simulate_session
from netllm.abr_state import AbrObservation
from netllm.video import Video, load_video
from traces.bandwidth import BandwidthTrace

ONLINE = ["bba", "rb", "bola", "robustmpc-pm1", "fastmpc", "robustmpc"]


def random_video(rng: np.random.Generator, chunks: int) -> Video:
    ladder = np.array([300, 750, 1200, 1850, 2850, 4300], dtype=float)
    noise = rng.uniform(0.7, 1.3, size=(6, chunks))
    sizes = (ladder[:, None] * 1000 / 8 * 4 * noise).astype(np.int64)
    return Video(tuple(ladder), sizes, 4.0, "rand")


def random_trace(rng: np.random.Generator, name: str) -> BandwidthTrace:
    n = int(rng.integers(20, 80))
    steps = rng.choice([0.5, 1.0, 2.0, 5.0], size=n - 1)
    times = np.concatenate([[0.0], np.cumsum(steps)])
    level = rng.uniform(200, 6000)
    kbps = np.clip(level * rng.lognormal(0, 0.6, size=n), 20, None)
    kbps[rng.random(n) < 0.1] = 0.0  # outages
    kbps[1] = max(kbps[1], 100.0)
    return BandwidthTrace(name, times, kbps)


class RandomPolicy(AbrPolicy):
    name = "random"

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def select_quality(self, obs: AbrObservation) -> int:
        return int(self.rng.integers(obs.levels))


def _values(trace, video, start, cfg) -> dict[str, float]:
    vals = {name: simulate_session(make_policy(name), trace, video, start, cfg).mean_qoe for name in ONLINE}
    for q in range(6):
        vals[f"const{q}"] = replay_plan([q] * video.chunk_count, trace, video, start, cfg).mean_qoe
    for seed in range(3):
        vals[f"random{seed}"] = simulate_session(RandomPolicy(seed), trace, video, start, cfg).mean_qoe
    return vals


@pytest.mark.parametrize("cap_s", [60.0, 12.0])
def test_bound_beats_every_policy_on_random_traces(cap_s):
    rng = np.random.default_rng(int(cap_s))
    cfg = SimConfig(buffer_cap_s=cap_s)
    for i in range(30):
        video = PreparedVideo(random_video(rng, int(rng.integers(6, 16))))
        trace = PreparedTrace(random_trace(rng, f"r{i}"))
        start = int(rng.integers(1, trace.samples))
        opt = solve(trace, video, start, cfg)
        for name, value in _values(trace, video, start, cfg).items():
            assert opt.mean_qoe >= value - 1e-9, (name, i)
        assert opt.plan_mean_qoe <= opt.mean_qoe + 1e-9
        replayed = simulate_session(PlanPolicy(opt.plan), trace, video, start, cfg).mean_qoe
        assert replayed == pytest.approx(opt.plan_mean_qoe, abs=1e-12)


def test_bound_equals_brute_force_where_exact():
    """On tiny sessions every plan can be enumerated: the bound is >= the best and equals it when exact."""
    rng = np.random.default_rng(7)
    cfg = SimConfig(buffer_cap_s=9.0)  # a small cap so that sleeps happen
    exact = 0
    for i in range(25):
        video = PreparedVideo(random_video(rng, 5))
        trace = PreparedTrace(random_trace(rng, f"b{i}"))
        start = int(rng.integers(1, trace.samples))
        best = max(replay_plan([1, *rest], trace, video, start, cfg).mean_qoe
                   for rest in itertools.product(range(6), repeat=4))
        opt = solve(trace, video, start, cfg)
        assert opt.mean_qoe >= best - 1e-9
        assert opt.plan_mean_qoe <= best + 1e-12
        if opt.exact:
            exact += 1
            assert opt.mean_qoe == pytest.approx(best, abs=1e-9)
    assert exact >= 20


def test_bound_beats_every_policy_on_fcc_test_traces(shared_data):
    from emulation.abr_sim_cli import read_start_offsets
    from traces.readers import read_trace_dir

    abr = shared_data / "abr"
    offsets = read_start_offsets(abr / "fcc-test-start-offsets.txt")
    video = PreparedVideo(load_video(abr / "videos" / "video1_sizes"))
    cfg = SimConfig()
    for trace in read_trace_dir(abr / "traces" / "fcc-test")[::7]:
        start = offsets[trace.name]
        opt = solve(trace, video, start, cfg)
        for name, value in _values(trace, video, start, cfg).items():
            assert opt.mean_qoe >= value - 1e-9, (name, trace.name)


def test_noise_is_refused():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="deterministic"):
        solve(random_trace(rng, "n"), random_video(rng, 4), 1, SimConfig(noise=True))
