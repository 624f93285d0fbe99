"""`netllm replay`: every (trace, policy) session over the emulated link, the combined summary and Parquet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from client.replay import aggregate, read_start_offsets
from netllm.cli import CommandError
from netllm.paths import REPO_ROOT
from tests.test_fidelity_live import emulation_prerequisites, prepare_small_video
from traces.generators import constant, stepped
from traces.readers import write_cooked


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
