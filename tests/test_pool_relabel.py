"""DAgger-style relabelling: an expert's choices in the states another policy played, stored as pool labels,
aggregated over rounds, and taught by the loss while the inputs keep the levels played."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_netllm_support import synthetic_sessions, synthetic_video, tiny_model
from training.pool import ARRAYS_FILE, PoolBuilder, PoolError, WindowSampler, load_pool


@pytest.fixture(scope="module")
def relabelled():
    """bba plays, robustMPC labels: the two disagree on many decisions."""
    from training.collect import collect_pool

    pool, _ = collect_pool(synthetic_sessions(2, seed=3), ["bba"], synthetic_video(), repeats=2, seed=1,
                           label_with="robustmpc")
    return pool


def test_labels_are_the_expert_choice_in_the_played_states(relabelled) -> None:
    """Replaying each episode's observations through a fresh robustMPC gives exactly the stored labels,
    and the played levels (bba's) stay in `actions`."""
    from controller.policies import make_policy
    from emulation.abr_sim import SimConfig
    from training.collect import Session, collect_pool, run_episode

    assert relabelled.labels is not None
    assert relabelled.relabelled_rows() > 0
    played, _ = collect_pool(synthetic_sessions(2, seed=3), ["bba"], synthetic_video(), repeats=2, seed=1)
    np.testing.assert_array_equal(relabelled.actions, played.actions)
    np.testing.assert_array_equal(relabelled.observations, played.observations)
    assert played.labels is None and played.relabelled_rows() == 0
    # the expert with its own memory fed the played observations, through the shared collect hook
    expert = make_policy("robustmpc")

    sessions = synthetic_sessions(2, seed=3)
    bounds = relabelled.episode_bounds()
    for e, (start, end) in enumerate(bounds):
        session = next(s for s in sessions if s.trace.name == relabelled.episode_trace[e])
        repeat = (int(relabelled.episode_seed[e]) - 1 * 1_000_003) % 2  # collect's seed = 1, repeats = 2
        noise = repeat > 0  # collect adds delay noise on repeats > 0
        ep = run_episode(make_policy("bba"), Session(session.trace, int(relabelled.episode_start_index[e])),
                         synthetic_video(), SimConfig(noise=noise), int(relabelled.episode_seed[e]), expert)
        np.testing.assert_array_equal(ep["labels"], relabelled.labels[start:end])


def test_labels_round_trip_and_aggregate(relabelled, tmp_path: Path) -> None:
    relabelled.save(tmp_path / "r1")
    back = load_pool(tmp_path / "r1")
    np.testing.assert_array_equal(back.labels, relabelled.labels)
    builder = PoolBuilder()
    plain = PoolBuilder()
    obs = relabelled.observations[:5]
    plain.add_episode(obs, [1, 1, 1, 1, 1], np.zeros(5), "t", "rb")
    builder.add_pool(plain.build())  # unlabelled: teaches its own actions
    builder.add_pool(back)
    both = builder.build()
    assert both.episode_count == 1 + relabelled.episode_count
    np.testing.assert_array_equal(both.targets[:5], [1, 1, 1, 1, 1])
    np.testing.assert_array_equal(both.targets[5:], relabelled.labels)
    np.testing.assert_array_equal(both.actions[5:], relabelled.actions)


def test_windows_carry_labels_and_the_loss_teaches_them(relabelled) -> None:
    sampler = WindowSampler(relabelled, window=6, return_scale=50.0)
    batch = sampler.gather([(0, 6), (6, 12)])
    np.testing.assert_array_equal(batch["labels"][0], relabelled.labels[:6])
    np.testing.assert_array_equal(batch["actions"][0], relabelled.actions[:6])
    model, _ = tiny_model(window=6)
    model.eval()
    tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
    with torch.no_grad():
        logits = model(tensors["returns"], tensors["states"], tensors["actions"], tensors["timesteps"])
        expected = torch.nn.functional.cross_entropy(logits[tensors["mask"]], tensors["labels"][tensors["mask"]])
        assert float(model.loss(tensors)) == pytest.approx(float(expected), rel=1e-6)
        without = {k: v for k, v in tensors.items() if k != "labels"}
        on_actions = torch.nn.functional.cross_entropy(logits[tensors["mask"]],
                                                       tensors["actions"][tensors["mask"]])
        assert float(model.loss(without)) == pytest.approx(float(on_actions), rel=1e-6)
    assert (batch["labels"] != batch["actions"]).any()  # so the two losses above differ in kind


def test_bad_labels_name_the_file(relabelled, tmp_path: Path) -> None:
    relabelled.save(tmp_path)
    with np.load(tmp_path / ARRAYS_FILE) as raw:
        arrays = {k: raw[k] for k in raw.files}
    arrays["labels"] = arrays["labels"][:-1]
    np.savez(tmp_path / ARRAYS_FILE, **arrays)
    with pytest.raises(PoolError, match=r"pool.npz: labels: shape"):
        load_pool(tmp_path)
    with pytest.raises(PoolError, match="labels do not line up"):
        PoolBuilder().add_episode(np.zeros((3, relabelled.observations.shape[1])), [0, 1, 2], [0.0] * 3, "t",
                                  "p", labels=[0, 1])


def test_collect_command_labels_and_appends(tmp_path: Path, capsys) -> None:
    from netllm.cli import main
    from traces.readers import write_cooked

    trace_dir, video_dir = tmp_path / "traces", tmp_path / "video"
    for s in synthetic_sessions(2):
        write_cooked(s.trace, trace_dir / s.trace.name)
    video_dir.mkdir()
    sizes = synthetic_video().chunk_sizes_bytes
    for level in range(sizes.shape[0]):
        (video_dir / f"video_size_{level}").write_text("\n".join(str(x) for x in sizes[level]) + "\n")
    common = ["--trace-dir", str(trace_dir), "--video", str(video_dir), "--repeats", "1"]
    assert main(["collect", "--out", str(tmp_path / "r0"), "--policies", "robustmpc", *common]) == 0
    assert main(["collect", "--out", str(tmp_path / "r1"), "--policies", "bba", "--label-with", "robustmpc",
                 "--append-to", str(tmp_path / "r0"), *common]) == 0
    r0, r1 = load_pool(tmp_path / "r0"), load_pool(tmp_path / "r1")
    assert r1.episode_count == 2 * r0.episode_count
    assert r1.episode_policy.tolist() == ["robustmpc"] * 2 + ["bba"] * 2
    n0 = len(r0)
    np.testing.assert_array_equal(r1.targets[:n0], r0.actions)  # the expert's own episodes: labels = actions
    summary = json.loads((tmp_path / "r1" / "summary.json").read_text())
    assert summary["appended_episodes"] == 2 and summary["relabelled_decisions"] == r1.relabelled_rows() > 0
    assert json.loads((tmp_path / "r1" / "pool.json").read_text())["label_with"] == "robustmpc"
    capsys.readouterr()
    assert main(["collect", "--out", str(tmp_path / "r0"), "--policies", "bba", "--append-to",
                 str(tmp_path / "r0"), *common]) == 2
    assert "same folder" in capsys.readouterr().err
    assert main(["collect", "--out", str(tmp_path / "x"), "--policies", "bba", "--label-with", "optimal",
                 *common]) == 2
    assert main(["collect", "--out", str(tmp_path / "x"), "--policies", "bba", "--append-to",
                 str(tmp_path / "missing"), *common]) == 2
    assert "--append-to" in capsys.readouterr().err


def test_an_expert_labelling_its_own_play_agrees_everywhere() -> None:
    """The shadow sees exactly what the player saw: robustMPC labelling robustMPC's episodes (noise and
    random starts included) reproduces every action."""
    from training.collect import collect_pool

    pool, _ = collect_pool(synthetic_sessions(2, seed=5), ["robustmpc"], synthetic_video(), repeats=3, seed=4,
                           label_with="robustmpc")
    assert pool.labels is not None and len(pool) > 0
    assert pool.relabelled_rows() == 0


def test_adjacent_epsilon_with_its_own_expert_gives_perturbed_demonstrations() -> None:
    """robustMPC perturbed by one level at a time, labelled by a shadow robustMPC (DART-style): every label
    is the choice the perturbation replaced, so a played level differs from its label by at most one rung,
    and both directions occur."""
    from training.collect import collect_pool

    pool, _ = collect_pool(synthetic_sessions(2, seed=3), ["robustmpc"], synthetic_video(), repeats=2,
                           seed=1, epsilon=0.3, epsilon_levels="adjacent", label_with="robustmpc")
    assert pool.meta["epsilon_levels"] == "adjacent"
    gap = pool.actions - pool.labels
    assert set(np.unique(gap).tolist()) == {-1, 0, 1}
    assert 0.1 < float(np.mean(gap != 0)) < 0.5  # about epsilon of the decisions were replaced


def test_adjacent_epsilon_stays_on_the_ladder() -> None:
    import random
    from types import SimpleNamespace

    from training.collect import EpsilonPolicy

    class Fixed:
        def __init__(self, level: int) -> None:
            self.level = level

        def reset(self) -> None: ...

        def select_quality(self, obs) -> int:
            return self.level

    obs = SimpleNamespace(levels=6)
    for level, allowed in ((0, {1}), (5, {4}), (2, {1, 3})):
        policy = EpsilonPolicy(Fixed(level), 1.0, random.Random(0), "adjacent")
        assert {policy.select_quality(obs) for _ in range(50)} == allowed
    with pytest.raises(ValueError, match="epsilon levels"):
        EpsilonPolicy(Fixed(0), 0.1, random.Random(0), "far")
