"""Experience pool: pickle-free round trip, episode bookkeeping, windows, errors, `netllm collect`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from controller.netllm.abr_features import COL, OBS_COLUMNS, OBS_DIM, previous_chunk_qoe
from tests.test_netllm_support import CHUNKS, small_pool, synthetic_sessions, synthetic_video
from training.pool import (
    ARRAYS_FILE,
    META_FILE,
    PoolBuilder,
    PoolError,
    WindowSampler,
    iter_windows,
    load_pool,
)


@pytest.fixture(scope="module")
def pool():
    return small_pool(traces=3, repeats=2)


def test_round_trip_is_exact_and_pickle_free(pool, tmp_path: Path) -> None:
    pool.save(tmp_path)
    with np.load(tmp_path / ARRAYS_FILE, allow_pickle=False) as raw:  # object arrays would raise here
        assert raw["observations"].dtype == np.float32
        assert raw["episode_trace"].dtype.kind == "U"
    back = load_pool(tmp_path)
    for name in ("observations", "actions", "rewards", "dones", "episode_trace", "episode_policy",
                 "episode_start_index", "episode_seed"):
        np.testing.assert_array_equal(getattr(back, name), getattr(pool, name), err_msg=name)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["observation_columns"] == list(OBS_COLUMNS) and meta["rows"] == len(pool)


def test_episode_bounds_follow_dones(pool) -> None:
    bounds = pool.episode_bounds()
    assert len(bounds) == pool.episode_count == 3 * 2 * 2
    assert (bounds[:, 1] - bounds[:, 0] == CHUNKS - 1).all()
    ids = pool.episode_ids()
    for e, (s, t) in enumerate(bounds):
        assert (ids[s:t] == e).all()
        chunk = pool.observations[s:t, COL["chunk_index"]]
        np.testing.assert_array_equal(chunk, np.arange(1, CHUNKS))


def test_returns_to_go(pool) -> None:
    rtg = pool.returns_to_go()
    for s, t in pool.episode_bounds():
        np.testing.assert_allclose(rtg[s], pool.rewards[s:t].astype(np.float64).sum(), rtol=1e-6)
        np.testing.assert_allclose(rtg[t - 1], pool.rewards[t - 1], rtol=1e-6)


def test_rewards_match_the_qoe_a_policy_derives_from_consecutive_observations(pool) -> None:
    """The serving policy updates its return-to-go from observations; it must agree with the simulator."""
    for s, t in pool.episode_bounds():
        for i in range(s, t - 1):
            assert previous_chunk_qoe(pool.observations[i], pool.observations[i + 1]) == \
                pytest.approx(float(pool.rewards[i]), abs=1e-4)


def test_sampled_windows_never_straddle_episodes(pool) -> None:
    sampler = WindowSampler(pool, window=10, return_scale=50.0, seed=3)
    ids = pool.episode_ids()
    ends = pool.episode_bounds()[:, 1]
    spans = sampler.sample_spans(2000)
    for start, end in spans:
        assert 1 <= end - start <= 10
        assert ids[start] == ids[end - 1]
        # a window is cut short only by its episode's end
        assert end - start == 10 or end == ends[ids[start]]
    assert any(end - start < 10 for start, end in spans)  # the episode-end case was exercised
    batch = sampler.gather(spans[:16])
    for i, (start, end) in enumerate(spans[:16]):
        n = end - start
        assert batch["mask"][i, :n].all() and not batch["mask"][i, n:].any()
        np.testing.assert_array_equal(batch["states"][i, :n], pool.observations[start:end])
        np.testing.assert_array_equal(batch["actions"][i, :n], pool.actions[start:end])
        assert (np.diff(batch["timesteps"][i, :n]) == 1).all()


def test_gather_rejects_a_window_crossing_an_episode_end(pool) -> None:
    sampler = WindowSampler(pool, window=10, return_scale=50.0)
    end = int(pool.episode_bounds()[0, 1])
    with pytest.raises(PoolError, match="crosses an episode end"):
        sampler.gather([(end - 3, end + 2)])


def test_iter_windows_cover_each_row_once_within_episodes(pool) -> None:
    bounds = pool.episode_bounds()
    spans = list(iter_windows(bounds, 7))
    covered = np.zeros(len(pool), dtype=int)
    ids = pool.episode_ids()
    for s, t in spans:
        covered[s:t] += 1
        assert ids[s] == ids[t - 1]
    assert (covered == 1).all()


def test_returns_are_scaled(pool) -> None:
    sampler = WindowSampler(pool, window=5, return_scale=25.0)
    batch = sampler.gather([(0, 5)])
    np.testing.assert_allclose(batch["returns"][0], pool.returns_to_go()[:5] / 25.0, rtol=1e-5)


def test_load_errors_name_the_file(pool, tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="pool.json"):
        load_pool(tmp_path)
    pool.save(tmp_path)
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(PoolError, match="pool.json: not valid JSON"):
        load_pool(tmp_path)
    pool.save(tmp_path)
    with np.load(tmp_path / ARRAYS_FILE) as raw:
        arrays = {k: raw[k] for k in raw.files}
    arrays["actions"][0] = 9
    np.savez(tmp_path / ARRAYS_FILE, **arrays)
    with pytest.raises(PoolError, match=r"pool.npz: actions: levels must be in 0\.\.5"):
        load_pool(tmp_path)


def test_builder_rejects_misaligned_episode() -> None:
    builder = PoolBuilder()
    with pytest.raises(PoolError, match="do not line up"):
        builder.add_episode(np.zeros((3, OBS_DIM)), [0, 1], [0.0, 0.0, 0.0], "t", "p")
    with pytest.raises(PoolError, match="empty"):
        builder.build()


def test_collect_command_writes_a_loadable_pool(tmp_path: Path) -> None:
    from netllm.cli import main
    from traces.readers import write_cooked

    trace_dir = tmp_path / "traces"
    for s in synthetic_sessions(2):
        write_cooked(s.trace, trace_dir / s.trace.name)
    video_dir = tmp_path / "video"
    video_dir.mkdir()
    sizes = synthetic_video().chunk_sizes_bytes
    for level in range(sizes.shape[0]):
        (video_dir / f"video_size_{level}").write_text("\n".join(str(x) for x in sizes[level]) + "\n")
    out = tmp_path / "pool"
    rc = main(["collect", "--out", str(out), "--trace-dir", str(trace_dir), "--video", str(video_dir),
               "--policies", "bba,robustmpc", "--repeats", "2", "--epsilon", "0.1"])
    assert rc == 0
    pool = load_pool(out)
    assert pool.episode_count == 2 * 2 * 2
    assert set(pool.episode_policy.tolist()) == {"bba", "robustmpc"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 8 and set(summary["mean_qoe_by_policy"]) == {"bba", "robustmpc"}
    assert json.loads((out / "config.json").read_text())["epsilon"] == 0.1


def test_collect_rejects_unknown_policy(tmp_path: Path, capsys) -> None:
    from netllm.cli import main

    rc = main(["collect", "--out", str(tmp_path), "--trace-dir", str(tmp_path), "--policies", "nope"])
    assert rc == 2
    assert "nope" in capsys.readouterr().err


def test_policies_of_a_session_are_paired_and_keep_best_keeps_the_winner() -> None:
    """Every policy of one (trace, repeat) starts at the same sample under the same noise seed, so their
    returns compare like for like; --keep best stores only the best of them."""
    from training.collect import collect_pool

    sessions, video = synthetic_sessions(3, seed=4), synthetic_video()
    everything, per_policy = collect_pool(sessions, ["bba", "robustmpc"], video, repeats=3, seed=2)
    pairs: dict[tuple[str, int], set[tuple[int, int]]] = {}
    for trace, start, seed in zip(everything.episode_trace, everything.episode_start_index,
                                  everything.episode_seed):
        pairs.setdefault((str(trace), int(seed)), set()).add((int(start), int(seed)))
    assert len(pairs) == 3 * 3 and all(len(v) == 1 for v in pairs.values())
    assert len({int(s) for s in everything.episode_start_index}) > 1  # repeats > 0 start elsewhere
    best, _ = collect_pool(sessions, ["bba", "robustmpc"], video, repeats=3, seed=2, keep="best")
    assert best.episode_count == 9
    returns = everything.episode_mean_rewards()
    for i, (trace, seed) in enumerate(zip(best.episode_trace, best.episode_seed)):
        paired = [j for j in range(everything.episode_count)
                  if everything.episode_trace[j] == trace and everything.episode_seed[j] == seed]
        assert len(paired) == 2
        assert best.episode_mean_rewards()[i] == pytest.approx(max(returns[j] for j in paired))
    assert len(per_policy["bba"]) == len(per_policy["robustmpc"]) == 9
    with pytest.raises(ValueError, match="keep"):
        collect_pool(sessions, ["bba"], video, keep="top")
