"""RL baseline machinery: returns, the network shape, a real `netllm train-rl` run with a tiny budget, and the
`pensieve` policy loading its checkpoint and playing in the simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from controller.policies import make_policy
from controller.policies.pensieve import build_net, pensieve_features
from emulation.abr_sim import SimConfig, simulate_session
from netllm.abr_state import AbrObservation
from netllm.video import load_video
from training.rl_baseline import discounted_returns


def test_discounted_returns_bootstrap_and_episode_cut():
    rewards = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]], dtype=np.float32)
    dones = np.array([[0, 0], [1, 0], [0, 0]], dtype=np.float32)
    out = discounted_returns(rewards, dones, np.array([10.0, 10.0]), 0.5)
    assert out[:, 0].tolist() == [1 + 0.5 * 2, 2.0, 3 + 0.5 * 10]
    tail = 3 + 0.5 * 10
    assert out[:, 1].tolist() == [1 + 0.5 * (2 + 0.5 * tail), 2 + 0.5 * tail, tail]


def test_features_and_network_shapes():
    import torch

    obs = AbrObservation(3, 48, 2, 12.5, [1000.0, 2000.0], [1.0, 2.0], [[100_000] * 6, [200_000] * 6],
                         [300.0, 750.0, 1200.0, 1850.0, 2850.0, 4300.0])
    f = pensieve_features(obs)
    assert f.shape == (6, 8) and f.dtype == np.float32
    assert f[0, -1] == pytest.approx(1200 / 4300) and f[1, -1] == pytest.approx(1.25)
    assert f[2, -2:].tolist() == pytest.approx([0.125, 0.25]) and f[2, :-2].sum() == 0
    assert f[3, -1] == pytest.approx(0.2) and f[4, :6].tolist() == pytest.approx([0.1] * 6)
    assert f[5, -1] == pytest.approx(45 / 48)
    actor, critic = build_net(6), build_net(6, outputs=1)
    x = torch.from_numpy(np.stack([f, f]))
    assert actor(x).shape == (2, 6) and critic(x).shape == (2, 1)


@pytest.mark.slow
def test_train_rl_command_and_pensieve_policy(shared_data, tmp_path):
    out = tmp_path / "pensieve"
    proc = subprocess.run([sys.executable, "-m", "netllm", "train-rl", "--out", str(out), "--steps", "1024",
                           "--envs", "4", "--rollout", "16", "--eval-every", "512"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1024 and summary["train_traces"] == 164 and summary["valid_traces"] == 29
    log = (out / "loss.csv").read_text().splitlines()
    assert log[0].startswith("step,") and len(log) == 3
    assert json.loads((out / "config.json").read_text())["steps"] == 1024  # the resolved options
    best = out / "best"  # the checkpoint: actor, critic and the network's config.json
    config = json.loads((best / "config.json").read_text())
    assert config["levels"] == 6 and config["valid_mean_qoe"] == pytest.approx(summary["best_valid_mean_qoe"])
    policy = make_policy("pensieve", checkpoint=best)
    video_dir = shared_data / "abr" / "videos" / "video1_sizes"
    video = load_video(video_dir)
    from traces.splits import split_paths
    from traces.readers import read_trace

    valid = [read_trace(p) for p in split_paths("valid", shared_data)]
    qoe = np.mean([simulate_session(policy, t, video, 1, SimConfig()).mean_qoe for t in valid])
    assert qoe == pytest.approx(summary["best_valid_mean_qoe"], abs=1e-6)
    # the harness runs it in worker processes too (torch in the parent must not hang the workers)
    listed = tmp_path / "valid.json"
    listed.write_text(json.dumps([str(p) for p in split_paths("valid", shared_data)[:3]]))
    sim = subprocess.run([sys.executable, "-m", "netllm", "sim", "--policies", "pensieve,bba", "--traces",
                          str(listed), "--video", str(video_dir), "--out", str(tmp_path / "sim"),
                          "--workers", "2"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NETLLM_PENSIEVE_CHECKPOINT": str(best)})
    assert sim.returncode == 0, sim.stderr
    assert json.loads((tmp_path / "sim" / "summary.json").read_text())["pensieve"]["traces"] == 3


def test_train_rl_refuses_test_traces(shared_data, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "netllm", "train-rl", "--out", str(tmp_path / "x"),
                           "--train-traces", "fcc-test", "--steps", "10"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "test traces" in proc.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-rl"):
        make_policy("pensieve", checkpoint=tmp_path)
