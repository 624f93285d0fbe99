"""The Gymnasium env: passes gymnasium's checker, seeds reproducibly, rewards are the chunk QoE terms."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from controller.policies import make_policy
from emulation.abr_env import AbrEnv
from emulation.abr_sim import SimConfig, simulate_session
from netllm.video import Video
from traces.bandwidth import BandwidthTrace


def _env(config=SimConfig()):
    rng = np.random.default_rng(0)
    ladder = (300.0, 750.0, 1200.0, 1850.0, 2850.0, 4300.0)
    video = Video(ladder, (np.array(ladder)[:, None] * 500 * rng.uniform(0.8, 1.2, (6, 12))).astype(np.int64))
    traces = [BandwidthTrace(f"t{i}", np.arange(0, 200.0), rng.uniform(200, 5000, 200)) for i in range(4)]
    return AbrEnv(traces, video, config), traces, video


def test_passes_gymnasium_env_checker():
    env, _, _ = _env()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no spec" notice only: the env is built directly, not via gym.make
        check_env(env, skip_render_check=True)


def test_episode_matches_the_simulator_and_seeding_repeats():
    env, traces, video = _env(SimConfig(noise=False))
    obs, info = env.reset(seed=11, options={"trace_index": 2, "start_index": 40})
    assert obs.shape == env.observation_space.shape and env.observation_space.contains(obs)
    assert info["obs"].chunk_index == 1 and info["trace"] == "t2"
    policy = make_policy("bba")
    policy.reset()
    rewards, done = [], False
    while not done:
        obs, reward, done, truncated, info = env.step(policy.select_quality(info["obs"]))
        assert not truncated
        rewards.append(reward)
    ref = simulate_session(make_policy("bba"), traces[2], video, start_index=40)
    assert rewards == ref.qoe[1:]
    with pytest.raises(RuntimeError):
        env.step(0)
    first = [env.reset(seed=5)[1]["start_index"] for _ in range(1)] + [env.reset()[1]["start_index"]]
    again = [env.reset(seed=5)[1]["start_index"]] + [env.reset()[1]["start_index"]]
    assert first == again


def test_noise_follows_the_env_seed():
    env, _, _ = _env(SimConfig(noise=True))
    runs = []
    for seed in (3, 3, 4):
        env.reset(seed=seed, options={"trace_index": 0, "start_index": 1})
        runs.append([env.step(2)[4]["download_time_s"] for _ in range(5)])
    assert runs[0] == runs[1] != runs[2]
