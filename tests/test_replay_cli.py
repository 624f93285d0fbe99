"""`netllm replay`: every (trace, policy) session over the emulated link, the combined summary and Parquet."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from client.replay import Config, _check_options, _jobs, _run_jobs, _session_row, aggregate, \
    read_start_offsets, refuse_used_folders, session_failed
from netllm.cli import CommandError
from netllm.paths import REPO_ROOT
from tests.test_fidelity_live import emulation_prerequisites, prepare_small_video
from traces.generators import constant, stepped
from traces.readers import read_trace_dir, write_cooked


def test_read_start_offsets(tmp_path: Path) -> None:
    path = tmp_path / "offsets.txt"
    path.write_text("# trace_file start_index\nA 3\n\nB 10  # comment\n")
    assert read_start_offsets(path) == {"A": 3, "B": 10}
    path.write_text("A 3\nB x\n")
    with pytest.raises(CommandError, match=r"offsets.txt:2:"):
        read_start_offsets(path)


def test_read_reference_start_offsets(shared_data: Path) -> None:
    offsets = read_start_offsets(shared_data / "abr" / "fcc-test-start-offsets.txt")
    assert len(offsets) == 100 and all(v >= 1 for v in offsets.values())


def test_aggregate_means_and_failures() -> None:
    rows = [{"policy": "a", "mean_qoe": 1.0, "player_exit_code": 0, "switches": 2},
            {"policy": "a", "mean_qoe": 2.0, "player_exit_code": 1, "switches": None},
            {"policy": "b", "mean_qoe": None, "player_exit_code": 0}]
    agg = aggregate(rows, ["a", "b"])
    assert agg["a"]["mean_qoe"] == 1.5 and agg["a"]["failed"] == 1 and agg["a"]["switches"] == 2
    assert agg["b"]["mean_qoe"] is None and agg["b"]["sessions"] == 1


@pytest.mark.emulation
@pytest.mark.browser
@pytest.mark.slow
def test_replay_two_traces_two_policies(tmp_path: Path) -> None:
    reason = emulation_prerequisites()
    if reason:
        pytest.skip(reason)
    video = prepare_small_video(tmp_path / "video", 3)
    traces = tmp_path / "traces"
    write_cooked(constant(3.0, duration_s=60), traces / "a_flat")
    write_cooked(stepped([(5, 0.8), (5, 2.5)]), traces / "b_steps")
    out = tmp_path / "replay"
    done = subprocess.run([sys.executable, "-m", "netllm", "replay", "--traces", str(traces),
                           "--policies", "bba,rb", "--video", str(video), "--out", str(out),
                           "--trace-offset-s", "2", "--parallel", "1"],
                          cwd=REPO_ROOT, env={**os.environ, "NETLLM_RUN_DIR": str(tmp_path / "runstate")},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4/4" in done.stderr  # tqdm progress
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True
    assert [(s["trace"], s["policy"]) for s in summary["sessions"]] == [
        ("a_flat", "bba"), ("a_flat", "rb"), ("b_steps", "bba"), ("b_steps", "rb")]
    assert all(s["chunks"] == 3 and s["player_exit_code"] == 0 for s in summary["sessions"])
    assert all(s["trace_start_time_s"] == 2.0 for s in summary["sessions"])
    for policy in ("bba", "rb"):
        agg = summary["policies"][policy]
        mine = [s["mean_qoe"] for s in summary["sessions"] if s["policy"] == policy]
        assert agg["sessions"] == 2 and agg["mean_qoe"] == pytest.approx(sum(mine) / 2)
    chunks = pd.read_parquet(out / "chunks.parquet")
    assert len(chunks) == 12 and set(chunks["policy"]) == {"bba", "rb"}
    assert set(chunks["trace"]) == {"a_flat", "b_steps"}
    for s in summary["sessions"]:
        folder = out / "sessions" / s["folder"]
        assert (folder / "rate_log.csv").exists() and (folder / "summary.json").exists()
    assert list((tmp_path / "runstate").glob("*.json")) == []


# --- option and policy checks, folder names, failure accounting (no network, no browser) -----------------

FAKE_VIDEO = SimpleNamespace(chunk_duration_s=4.0, levels=6, chunk_count=3)


def _cfg(tmp_path: Path, **changes: Any) -> Config:
    cfg = Config(traces=tmp_path / "traces", policies=["bba", "rb"], out=tmp_path / "out")
    return dataclasses.replace(cfg, **changes)


def test_unknown_policy_refused_before_anything_runs(tmp_path: Path) -> None:
    """The controller would answer HTTP 400 to every decision, the page play its fallback: refused first."""
    write_cooked(constant(3.0, duration_s=20), tmp_path / "traces" / "a")
    done = subprocess.run([sys.executable, "-m", "netllm", "replay", "--traces", str(tmp_path / "traces"),
                           "--video", str(tmp_path), "--parallel", "2", "--policies", "bba,nosuchpolicy",
                           "--out", str(tmp_path / "o")], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "unknown policy 'nosuchpolicy'; known: bba" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()
    with pytest.raises(CommandError, match="netllm sim"):
        _check_options(_cfg(tmp_path, policies=["optimal"]))


@pytest.mark.parametrize(("option", "value"), [
    ("rtt_ms", -10.0), ("rtt_ms", math.nan), ("rtt_ms", math.inf), ("rtt_ms", 1e9),
    ("decision_timeout_ms", math.nan), ("decision_timeout_ms", math.inf), ("decision_timeout_ms", 0.0),
    ("buffer_s", math.nan), ("buffer_s", math.inf), ("trace_offset_s", math.nan),
])
def test_bad_numbers_refused(option: str, value: float, tmp_path: Path) -> None:
    flag = "--" + option.replace("_", "-")
    with pytest.raises(CommandError, match=f"^{flag} must be a finite number"):
        _check_options(_cfg(tmp_path, **{option: value}))


def test_rtt_nan_exits_2_from_the_command(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "netllm", "replay", "--traces", str(tmp_path), "--rtt-ms",
                           "nan", "--out", str(tmp_path / "o")], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "--rtt-ms must be a finite number >= 0 and <= 10000, got nan" in done.stderr


def test_session_folders_never_collide(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    for name in ("x y.txt", "x_y.txt", "sub1/t.txt", "sub2/t.txt"):
        write_cooked(constant(3.0, duration_s=20), traces / name)
    top = _jobs(_cfg(tmp_path), read_trace_dir(traces, "*"), {}, FAKE_VIDEO, tmp_path / "out")
    nested = _jobs(_cfg(tmp_path), read_trace_dir(traces, "*/*"), {}, FAKE_VIDEO, tmp_path / "out")
    folders = [j.folder for j in top + nested]
    assert len(set(folders)) == len(folders) == 8
    assert folders[2:4] == ["x_y.txt__bba", "x_y.txt__rb"]  # plain names unchanged: --resume still finds them
    assert all(re.fullmatch(r"x_y\.txt__(bba|rb)-[0-9a-f]{8}", f) for f in folders[:2])  # "x y.txt"
    assert all(re.fullmatch(r"sub[12]_t\.txt__(bba|rb)-[0-9a-f]{8}", f) for f in folders[4:])
    assert {j.trace.name for j in nested} == {"t.txt"}  # the rows keep the trace's own name
    assert len({j.out for j in top + nested}) == 8


def test_a_folder_that_holds_a_chunk_log_is_refused(tmp_path: Path) -> None:
    job = SimpleNamespace(out=tmp_path / "sessions" / "a__bba")
    refuse_used_folders([job])  # fresh: fine
    job.out.mkdir(parents=True)
    (job.out / "chunks.csv").write_text("session_id\n")
    with pytest.raises(CommandError, match="already holds a session's chunks.csv"):
        refuse_used_folders([job])


def test_all_fallback_and_failed_setups_count_as_failed() -> None:
    rows = [{"policy": "a", "chunks": 3, "fallback_chunks": 3, "player_exit_code": 0, "mean_qoe": 1.0},
            {"policy": "a", "chunks": 3, "fallback_chunks": 1, "player_exit_code": 0, "mean_qoe": 2.0},
            {"policy": "a", "chunks": 0, "player_exit_code": None, "error": "session set-up failed: x"}]
    assert [session_failed(r) for r in rows] == [True, False, True]
    assert aggregate(rows, ["a"])["a"]["failed"] == 2
    row = _session_row(rows[0], "t__a")
    assert "fallback" in row["error"] and row["folder"] == "t__a"
    assert _session_row(rows[1], "u__a")["error"] is None


def test_serial_setup_failure_is_recorded_and_the_run_goes_on(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import emulation.live_session as live_session

    write_cooked(constant(3.0, duration_s=20), tmp_path / "traces" / "a")
    cfg = _cfg(tmp_path, parallel=1)
    jobs = _jobs(cfg, read_trace_dir(tmp_path / "traces"), {}, FAKE_VIDEO, tmp_path / "out")

    def fake_session(stream_cfg: Any, video: Any, trace: Any, start_s: float) -> Any:
        if stream_cfg.policy == "bba":
            raise CommandError("the controller did not start: boom")
        return SimpleNamespace(summary={"trace": trace.name, "policy": stream_cfg.policy, "chunks": 3,
                                        "fallback_chunks": 0, "player_exit_code": 0, "error": None})

    monkeypatch.setattr(live_session, "emulated_session", fake_session)
    done: list[tuple[str, dict[str, Any]]] = []
    _run_jobs(cfg, jobs, FAKE_VIDEO, tmp_path / "out", lambda job, s: done.append((job.folder, s)),
              SimpleNamespace(set_postfix_str=lambda text: None))
    assert [folder for folder, _ in done] == ["a__bba", "a__rb"]
    failed = _session_row(done[0][1], "a__bba")
    assert failed["error"] == "session set-up failed: the controller did not start: boom"
    assert failed["player_exit_code"] is None and failed["chunks"] == 0 and failed["trace"] == "a"
    on_disk = json.loads((tmp_path / "out" / "sessions" / "a__bba" / "summary.json").read_text())
    assert on_disk["error"] == failed["error"]
    rows = [_session_row(s, f) for f, s in done]
    assert [session_failed(r) for r in rows] == [True, False]
    assert aggregate(rows, ["bba", "rb"])["bba"]["failed"] == 1
