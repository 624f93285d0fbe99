"""The VP replay backend and `netllm vp-eval`: in-process and through-the-controller evaluations agree, the
files the command writes, its errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from controller.runner import controller_in_thread, run_controller
from controller.vp.policies import make_vp_policy
from emulation.vp_eval import bootstrap_ci
from emulation.vp_replay import VpReplayError, evaluate_policy, replay_via_controller
from netllm.cli import main
from traces.headmove import HeadTrace, WindowSpec, make_windows, synthetic_head_trace, write_head_trace


def steady_turn(video: str, user: str, n: int = 150, yaw_speed_deg_s: float = 25.0) -> HeadTrace:
    """Constant yaw speed, level head: velocity and linear regression predict it exactly."""
    return synthetic_head_trace(video, user, n_samples=n, yaw_speed_deg_s=yaw_speed_deg_s,
                                pitch_amplitude_deg=0.0, seed=int(video) * 10 + int(user))


def test_evaluate_policy_on_constant_motion() -> None:
    windows = make_windows([steady_turn("1", "1"), steady_turn("1", "2", yaw_speed_deg_s=-40.0)])
    assert len(windows) == 8
    for name in ("velocity", "linear-regression"):
        scores = evaluate_policy(make_vp_policy(name), windows, batch_size=3)
        assert scores.mae_deg.max() < 1e-9 and scores.great_circle_deg.max() < 1e-9
    still = evaluate_policy(make_vp_policy("no-motion"), windows)
    # yaw error grows 5 (or 8) degrees a step: MAE = mean over steps and 3 axes
    np.testing.assert_allclose(still.mae_deg[:4], 5.0 * np.arange(1, 21).mean() / 3)
    np.testing.assert_allclose(still.great_circle_deg[0], 5.0 * np.arange(1, 21))
    assert np.isnan(still.latency_ms).all()


async def test_replay_through_the_controller_matches_in_process() -> None:
    traces = [synthetic_head_trace(str(v), "1", n_samples=130, noise_deg=2.0, seed=v) for v in range(1, 4)]
    spec = WindowSpec()
    local = evaluate_policy(make_vp_policy("linear-regression"), make_windows(traces, spec))
    async with run_controller(tasks=["vp"]) as url:
        remote = await replay_via_controller(url, "linear-regression", traces, spec, concurrency=2)
        with pytest.raises(VpReplayError, match="400.*unknown VP policy"):
            await replay_via_controller(url, "nope", traces, spec)
    assert len(remote.windows) == len(local.windows) == 3 * 3
    np.testing.assert_array_equal(remote.windows.start, local.windows.start)
    np.testing.assert_allclose(remote.predictions_deg, local.predictions_deg, atol=1e-9)
    np.testing.assert_allclose(remote.mae_deg, local.mae_deg, atol=1e-9)
    assert np.all(remote.latency_ms >= 0) and np.all(remote.rtt_ms >= remote.latency_ms)


async def test_replay_paces_playback_time() -> None:
    trace = steady_turn("1", "1", n=150)
    windows = make_windows([trace])
    span_s = float(windows.history_time_s[-1, -1] - windows.history_time_s[0, -1])
    async with run_controller(tasks=["vp"]) as url:
        started = time.perf_counter()
        scores = await replay_via_controller(url, "velocity", [trace], realtime_speed=50.0)
    assert time.perf_counter() - started >= span_s / 50.0 * 0.95
    assert scores.mae_deg.max() < 1e-9


async def test_unreachable_controller_is_a_clear_error() -> None:
    with pytest.raises(VpReplayError, match="cannot reach the controller"):
        await replay_via_controller("http://127.0.0.1:9", "velocity", [steady_turn("1", "1")], timeout_s=5)


def test_bootstrap_interval_resamples_viewers() -> None:
    values = np.array([1.0, 1.0, 1.0, 9.0, 9.0, 9.0])
    low, high = bootstrap_ci(values, np.array(["a", "a", "a", "b", "b", "b"]), 2000, 0)
    assert low == pytest.approx(1.0) and high == pytest.approx(9.0)  # two viewers: all-a .. all-b
    narrow = bootstrap_ci(values, np.arange(6).astype(str), 2000, 0)
    assert low < narrow[0] < 5.0 < narrow[1] < high
    assert bootstrap_ci(values, np.array(["a"] * 6), 100, 0) == [5.0, 5.0]


def write_dataset(root: Path, videos: int = 5, users: int = 5) -> Path:
    folder = root / "Synth"
    for v in range(1, videos + 1):
        for u in range(1, users + 1):
            trace = synthetic_head_trace(str(v), str(u), n_samples=160, noise_deg=1.5, seed=v * 31 + u)
            write_head_trace(trace, folder / f"video{v}" / "5Hz" / f"simple_5Hz_user{u}.csv")
    return folder


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")


def test_cli_writes_logs_and_summary(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["vp-eval", "--dataset", str(dataset), "--out", str(out), "--split", "all",
                 "--bootstrap", "200"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["split"] == "all" and summary["window"]["history"] == 10
    entry = summary["datasets"]["Synth"]
    assert entry["viewers"] == 25 and set(entry["policies"]) == {"no-motion", "linear-regression", "velocity"}
    for doc in entry["policies"].values():
        assert doc["windows"] == 25 * 5 and doc["viewers"] == 25
        assert doc["mae_ci95"][0] <= doc["mae_deg"] <= doc["mae_ci95"][1]
        assert len(doc["great_circle_deg_per_step"]) == 20 and len(doc["mae_deg_per_step"]) == 20
        assert set(doc["mae_deg_per_axis"]) == {"roll", "pitch", "yaw"}
    table = pd.read_parquet(out / "windows.parquet")
    assert len(table) == 3 * 125 and {"dataset", "video", "user", "window_start", "policy", "mae_deg",
                                     "gc_deg_1", "gc_deg_20", "latency_ms"} <= set(table.columns)
    for name, doc in entry["policies"].items():
        assert table[table.policy == name].mae_deg.mean() == pytest.approx(doc["mae_deg"])
    assert len(pd.read_csv(out / "windows.csv")) == len(table)


def test_cli_through_the_controller_matches_in_process(dataset: Path, tmp_path: Path) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    args = ["vp-eval", "--dataset", str(dataset), "--split", "test", "--policies", "velocity,no-motion",
            "--no-csv", "--bootstrap", "50"]
    assert main(args + ["--out", str(local)]) == 0
    with controller_in_thread(tasks=["vp"]) as url:
        assert main(args + ["--out", str(remote), "--via-controller", url]) == 0
    a = json.loads((local / "summary.json").read_text())["datasets"]["Synth"]
    b = json.loads((remote / "summary.json").read_text())["datasets"]["Synth"]
    assert a["split_counts"]["test"]["pairs"] == a["viewers"] > 0
    for name in ("velocity", "no-motion"):
        assert b["policies"][name]["mae_deg"] == pytest.approx(a["policies"][name]["mae_deg"], abs=1e-9)
        assert b["policies"][name]["latency_ms_p50"] >= 0


@pytest.mark.parametrize("extra, words", [
    (["--policies", "nope"], "unknown VP policy 'nope'"),
    (["--policies", "velocity", "--policy-options", '{"velocity": {"bogus": 1}}'], "bad options"),
    (["--policies", "velocity", "--policy-options", "[1]"], "--policy-options"),
    (["--split", "middle"], "split must be one of"),
    (["--split-scheme", "netllm"], "netllm scheme covers"),
    (["--history", "40"], "trim_head"),
])
def test_cli_errors(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
                    words: str) -> None:
    assert main(["vp-eval", "--dataset", str(dataset), "--out", str(tmp_path / "o")] + extra) == 2
    assert words in capsys.readouterr().err


def test_cli_missing_dataset_and_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["vp-eval", "--dataset", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    folder = write_dataset(tmp_path / "d", videos=3, users=3)
    bad = folder / "video1" / "5Hz" / "simple_5Hz_user1.csv"
    lines = bad.read_text().splitlines()
    lines[6] = "1.2,oops,0,0"
    bad.write_text("\n".join(lines) + "\n")
    assert main(["vp-eval", "--dataset", str(folder), "--out", str(tmp_path / "o"), "--split", "all"]) == 2
    assert f"{bad}:7: field 2 (roll_deg) is not a number" in capsys.readouterr().err


def test_reference_jin2022_no_motion(shared_data: Path, tmp_path: Path) -> None:
    """Jin2022's test split (NetLLM's groups): no-motion's MAE is close to the published ~9.8 degrees."""
    out = tmp_path / "jin"
    assert main(["vp-eval", "--dataset", str(shared_data / "vp" / "Jin2022"), "--out", str(out),
                 "--policies", "no-motion", "--no-csv", "--bootstrap", "100"]) == 0
    doc = json.loads((out / "summary.json").read_text())["datasets"]["Jin2022"]["policies"]["no-motion"]
    assert doc["windows"] == 1698 and 9.0 < doc["mae_deg"] < 10.5


def test_stateful_policies_are_evaluated_viewer_by_viewer() -> None:
    from controller.vp.policies import NoMotion

    class CountingNoMotion(NoMotion):
        stateful = True

        def __init__(self) -> None:
            self.calls = 0

        def reset(self) -> None:
            self.calls = 0

        def predict_batch(self, histories_deg, horizon=20, contexts=None):  # type: ignore[no-untyped-def]
            assert len(histories_deg) == 1 and contexts is not None
            self.calls += 1
            out = super().predict_batch(histories_deg, horizon)
            out[..., 1] = self.calls  # pitch carries the per-viewer call count
            return out

    windows = make_windows([steady_turn("1", "1"), steady_turn("1", "2")])
    scores = evaluate_policy(CountingNoMotion(), windows)
    np.testing.assert_array_equal(scores.predictions_deg[:, 0, 1], [1, 2, 3, 4, 1, 2, 3, 4])


def test_cli_max_windows_keeps_whole_viewers(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "few"
    assert main(["vp-eval", "--dataset", str(dataset), "--out", str(out), "--split", "all", "--max-windows", "6",
                 "--policies", "no-motion", "--no-csv"]) == 0
    doc = json.loads((out / "summary.json").read_text())["datasets"]["Synth"]["policies"]["no-motion"]
    assert doc["viewers"] == 2 and doc["windows"] == 10


@pytest.mark.parametrize("extra, words", [
    (["--batch-size", "0"], "--batch-size >= 1"),
    (["--concurrency", "0"], "--concurrency >= 1"),
    (["--bootstrap", "-1"], "--bootstrap >= 0"),
    (["--realtime-speed", "nan"], "--realtime-speed"),
    (["--policies", "velocity,velocity"], "a policy is listed twice"),
    (["--split", "all", "--trim-tail", "100000"], "holds no window"),
])
def test_cli_rejects_bad_values_before_writing(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                               extra: list[str], words: str) -> None:
    out = tmp_path / "o"
    assert main(["vp-eval", "--dataset", str(dataset), "--out", str(out)] + extra) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_evaluate_policy_refuses_an_empty_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        evaluate_policy(make_vp_policy("velocity"), make_windows([steady_turn("1", "1")]), batch_size=0)


def test_cli_refuses_two_datasets_with_one_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first, second = write_dataset(tmp_path / "a", 2, 2), write_dataset(tmp_path / "b", 2, 2)
    assert main(["vp-eval", "--dataset", f"{first},{second}", "--out", str(tmp_path / "o"),
                 "--split", "all"]) == 2
    assert "Synth is given twice" in capsys.readouterr().err


def test_cli_out_that_is_a_file_is_a_one_line_error(dataset: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "taken"
    out.write_text("")
    assert main(["vp-eval", "--dataset", str(dataset), "--out", str(out), "--split", "all"]) == 2
    assert capsys.readouterr().err.strip() == f"netllm vp-eval: error: {out}: File exists"


def test_rows_scored_before_a_failure_are_in_windows_csv(dataset: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import emulation.vp_eval as vp_eval

    real_score = vp_eval._score

    def failing_second(cfg, name, *rest):  # type: ignore[no-untyped-def]
        if name == "velocity":
            raise RuntimeError("killed mid-run")
        return real_score(cfg, name, *rest)

    monkeypatch.setattr(vp_eval, "_score", failing_second)
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="killed mid-run"):
        main(["vp-eval", "--dataset", str(dataset), "--out", str(out), "--split", "all", "--no-csv",
              "--policies", "no-motion,velocity"])
    rows = pd.read_csv(out / "windows.csv")
    assert len(rows) == 25 * 5 and set(rows.policy) == {"no-motion"} and "gc_deg_20" in rows.columns
    assert not (out / "summary.json").exists()


def test_no_csv_removes_the_running_copy(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert main(["vp-eval", "--dataset", str(dataset), "--out", str(out), "--split", "all", "--no-csv",
                 "--policies", "no-motion,velocity", "--bootstrap", "10"]) == 0
    assert not (out / "windows.csv").exists() and len(pd.read_parquet(out / "windows.parquet")) == 2 * 125
