"""`netllm replay --resume`: an interrupted replay (SIGTERM or SIGKILL mid-session) finished with --resume
redoes no finished session, loses no row, keeps the unfinished session's partial folder aside, and merges
to the same results as an uninterrupted replay (structure, row counts, no duplicates)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from client.replay_ledger import Ledger, check_same_options, has_previous_run, interrupted_records, move_aside
from netllm.cli import CommandError
from netllm.paths import REPO_ROOT
from tests.test_fidelity_live import emulation_prerequisites, prepare_small_video
from traces.generators import constant
from traces.readers import write_cooked

CHUNKS = 3
COMPARED = ("trace", "policy", "session_id", "chunks", "player_exit_code", "error", "trace_start_time_s",
            "rtt_method", "folder")


def test_ledger_ignores_a_truncated_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ledger = Ledger(tmp_path)
    ledger.append({"folder": "a__bba", "chunks": 3})
    with open(ledger.path, "a") as fh:
        fh.write('{"folder": "b__bb')  # the driver killed mid-write
    assert list(ledger.rows()) == ["a__bba"]
    assert "unreadable ledger line" in capsys.readouterr().err


def test_move_aside_numbers_repeats_and_records_rows(tmp_path: Path) -> None:
    for attempt in (1, 2):
        folder = tmp_path / "sessions" / "t__bba"
        folder.mkdir(parents=True)
        (folder / "chunks.csv").write_text("chunk_index,quality\n0,1\n1,2\n")
        records = move_aside(tmp_path, ["t__bba", "never_started"])
        assert [(r["folder"], r["moved_to"], r["chunks"]) for r in records] == [
            ("t__bba", f"interrupted/t__bba.{attempt}", 2)]
    assert len(interrupted_records(tmp_path)) == 2
    assert (tmp_path / "interrupted" / "t__bba.1" / "chunks.csv").exists()
    assert not (tmp_path / "sessions" / "t__bba").exists()


def test_previous_run_detection_and_option_check(tmp_path: Path) -> None:
    assert not has_previous_run(tmp_path)
    (tmp_path / "sessions" / "x").mkdir(parents=True)
    assert has_previous_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"video": "v", "rtt_ms": 80.0, "buffer_s": 60.0}))
    check_same_options(tmp_path, {"video": "v", "rtt_ms": 80.0, "buffer_s": 60.0})
    with pytest.raises(CommandError, match="--rtt-ms 80.0 -> 40.0"):
        check_same_options(tmp_path, {"video": "v", "rtt_ms": 40.0, "buffer_s": 60.0})


def _replay_cmd(traces: Path, video: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "netllm", "replay", "--traces", str(traces), "--policies", "bba",
            "--video", str(video), "--out", str(out), "--parallel", "1", *extra]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    reason = emulation_prerequisites()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("resume")
    traces = root / "traces"
    for name in ("a_fast", "b_fast", "c_fast"):
        write_cooked(constant(50.0, duration_s=60), traces / name)
    return traces, prepare_small_video(root / "video", CHUNKS)


def _wait_for(predicate, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]  # type: ignore[union-attr]
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout_s} s")


@pytest.mark.emulation
@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_interrupted_then_resumed_equals_uninterrupted(inputs: tuple[Path, Path], tmp_path: Path,
                                                        sig: signal.Signals) -> None:
    traces, video = inputs
    env = {**os.environ, "NETLLM_RUN_DIR": str(tmp_path / "runstate")}
    reference = tmp_path / "reference"
    done = subprocess.run(_replay_cmd(traces, video, reference), cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    out = tmp_path / "resumed"
    proc = subprocess.Popen(_replay_cmd(traces, video, out), cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ledger = out / "sessions.jsonl"
    in_flight = out / "sessions" / "b_fast__bba" / "events.jsonl"
    # One session finished, the next one playing: interrupt it there.
    _wait_for(lambda: ledger.exists() and in_flight.exists() and in_flight.stat().st_size > 0, 300, proc)
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    assert code == (128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGKILL)
    finished_before = [json.loads(x)["folder"] for x in ledger.read_text().splitlines()]
    assert finished_before == ["a_fast__bba"]
    first_summary = (out / "sessions" / "a_fast__bba" / "summary.json").read_text()

    refused = subprocess.run(_replay_cmd(traces, video, out), cwd=REPO_ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "--resume" in refused.stderr  # never mixes two runs' rows
    resumed = subprocess.run(_replay_cmd(traces, video, out, "--resume"), cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    # The finished session was not redone; the unfinished one was moved aside whole and redone.
    assert (out / "sessions" / "a_fast__bba" / "summary.json").read_text() == first_summary
    moved = interrupted_records(out)
    assert [r["folder"] for r in moved] == ["b_fast__bba"]
    assert (out / moved[0]["moved_to"] / "events.jsonl").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["interrupted_sessions"] == moved
    ref_summary = json.loads((reference / "summary.json").read_text())
    assert [{k: s[k] for k in COMPARED} for s in summary["sessions"]] == \
        [{k: s[k] for k in COMPARED} for s in ref_summary["sessions"]]
    ledger_folders = [json.loads(x)["folder"] for x in ledger.read_text().splitlines()]
    assert sorted(ledger_folders) == ["a_fast__bba", "b_fast__bba", "c_fast__bba"]  # each once
    chunks = pd.read_parquet(out / "chunks.parquet")
    ref_chunks = pd.read_parquet(reference / "chunks.parquet")
    assert len(chunks) == len(ref_chunks) == 3 * CHUNKS
    assert not chunks.duplicated(["session_id", "chunk_index"]).any()
    assert sorted(chunks["session_id"].unique()) == sorted(ref_chunks["session_id"].unique())
    assert list((tmp_path / "runstate").glob("*.json")) == []  # the killed run's network was removed too
